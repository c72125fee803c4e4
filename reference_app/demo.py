"""The demo chain, the project's main job: three branches with their counter pages.

`./run demo` (`python -m reference_app.demo`) creates a chain certificate authority and
three branches (SH01 南京西路店, SH02 徐家汇店, HZ01 杭州西湖店) in ./demo-data, each in
its own data directory, fills them with demo members, rules and a few days of history
(reference_app/demo_data.py), then runs each branch as a real `python -m reference_app`
process: its node (mutual TLS against the chain CA) and its counter page in one. The
branches are wired in a line, HZ01 → SH02 → SH01 (each dials the next, as shops behind
NAT would dial a hub), so what happens at HZ01 reaches SH01 through SH02.

Once all three answer and hold the same data, it prints the three counter URLs and
the demo operator's login, and keeps them running until Ctrl-C (or SIGTERM), which
stops them in order. Running it again resumes the same data; --fresh starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from crdtledger.ledger import Ledger
from crdtledger.private import private_dir, private_file_open, private_text_open
from peer import local
from peer.chain import enrol, init_chain
from peer.printer_listener import PrinterListener, Printout, show
from peer.receipts import PrinterConfig, save_config
from peer.smtp_standin import SmtpStandIn, text_of
from reference_app import members_portal
from reference_app.app import SECRET_FILE
from reference_app.demo_data import BRANCHES, DUPLICATE, MEMBERS, Seeded, enrolled_since, seed

DIALS = {"SH02": "SH01", "HZ01": "SH02"}  # who dials whom: a line, relayed hop by hop
CHAIN_NAME = "demo"
HEAD_OFFICE = next(iter(BRANCHES))  # SH01: where demo_data sets the rules and operators
SEEDED_FILE = "demo.json"  # written last: data without it is a creation cut short
# The demo's receipt printer (peer/printer_listener.py): port 9100 as a network
# printer's, else any free port; every branch prints there, HZ01 on 80 mm paper.
PRINTER_PORT = 9100
PRINTER_WIDTHS = {"HZ01": 80}
SHOP_TITLE = "悦康养生（演示）"
RECEIPTS_FILE = Path("printer") / "receipts.txt"
# The demo's gateways (peer.gateways): e-mail to a local SMTP stand-in (aiosmtpd) on
# port 2525 (else any free port), SMS to a log gateway; both shown in this terminal
# and kept in mail/. The owner's daily report is set this many minutes after start.
SMTP_PORT = 2525
MAIL_DIR = Path("mail")
OWNER_MAIL = "owner@demo.example"
REPORT_AFTER_MIN = 3
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


class DemoError(Exception):
    """The demo could not come up; the message says why (and where the log is)."""


class Demo:
    def __init__(self, root: Path, base_port: int) -> None:
        self.root = root
        self.chain = root / "chain"
        self.logs = root / "logs"
        # Counter pages first, so their URLs are the memorable base, base+1, base+2.
        n = len(BRANCHES)
        self.http = {node: base_port + i for i, node in enumerate(BRANCHES)}
        self.sync = {node: base_port + n + i for i, node in enumerate(BRANCHES)}
        self.api = {node: base_port + 2 * n + i for i, node in enumerate(BRANCHES)}
        # The member self-service pages (members_portal), served by the head office.
        self.members_port = base_port + 3 * n
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.printer: PrinterListener | None = None
        self.smtp: SmtpStandIn | None = None
        self.report_at = ""
        self._sms_seen = 0

    def data(self, node: str) -> Path:
        return self.root / node

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.http[node]}"

    def members_url(self) -> str:
        return f"https://127.0.0.1:{self.members_port}{members_portal.PATH}"

    def members_cert(self) -> None:
        """The head office's member port certificate, from the chain's CA (made once;
        demo data from before it had one gets it here)."""
        if not (self.data(HEAD_OFFICE) / "tls" / members_portal.CERT_FILE).exists():
            members_portal.issue_cert(self.chain, self.data(HEAD_OFFICE),
                                      ["127.0.0.1", "localhost"])

    # --- creating the chain -------------------------------------------------

    def created(self) -> bool:
        return (self.root / SEEDED_FILE).exists()

    def create(self) -> Seeded:
        """The head office makes the chain's CA; each branch gets a store and a
        certificate; the demo data goes in before any node runs."""
        if self.root.exists() and any(self.root.iterdir()):
            if not (self.chain / "chain.json").exists():  # never delete what is not ours
                raise DemoError(f"{self.root} holds something other than demo data; "
                                "give another directory with --data")
            shutil.rmtree(self.root)
        # Demo members' phones and the shared secret live here: private like a node.
        private_dir(self.root)
        init_chain(self.chain, CHAIN_NAME)
        for node in BRANCHES:
            Ledger.create(self.data(node), node, CHAIN_NAME)
            # The first branch is the head office: it alone may change rules and operators.
            enrol(self.chain, self.data(node), node, head_office=node == HEAD_OFFICE,
                  not_before=enrolled_since())  # before the seeded history
        seeded = seed({node: self.data(node) for node in BRANCHES})
        # One secret signs the session cookies of all three pages: a browser shares
        # cookies across the ports of 127.0.0.1, so with a secret each, opening one
        # branch's page would throw away the session of the others. It goes where
        # the app looks for it (not on a command line, which every local user can read).
        secret = secrets.token_urlsafe(32)
        for node in BRANCHES:
            with private_text_open(self.data(node) / SECRET_FILE, exclusive=True) as f:
                f.write(secret)
        with private_text_open(self.root / SEEDED_FILE) as f:
            f.write(json.dumps(asdict(seeded), ensure_ascii=False, indent=1))
        return seeded

    def facts(self) -> dict[str, Any]:
        return dict(json.loads((self.root / SEEDED_FILE).read_text(encoding="utf-8")))

    # --- running the branches -----------------------------------------------

    def argv(self, node: str) -> list[str]:
        argv = [sys.executable, "-m", "reference_app", "--data", str(self.data(node)),
                "--http", f"127.0.0.1:{self.http[node]}",
                "--listen", f"127.0.0.1:{self.sync[node]}",
                "--api", f"127.0.0.1:{self.api[node]}",
                "--no-mdns"]  # the wiring below is the demo's, not whatever the LAN holds
        if node in DIALS:
            argv += ["--peer", f"wss://127.0.0.1:{self.sync[DIALS[node]]}"]
        if node == HEAD_OFFICE:
            argv += ["--members", f"127.0.0.1:{self.members_port}"]
        return argv

    def launch(self, node: str) -> None:
        """Start one branch process, its output to logs/NODE.log."""
        private_dir(self.logs)  # a node's log names members and operators
        if node == HEAD_OFFICE:
            self.members_cert()
        with private_file_open(self.logs / f"{node}.log", append=True) as log:
            self.procs[node] = subprocess.Popen(
                self.argv(node), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Its own process group: Ctrl-C at the terminal reaches only us, and we
                # stop the branches in order; the group lets us clean up after one.
                start_new_session=True, preexec_fn=_die_with_parent)

    def start_printer(self) -> None:
        """A receipt printer the user can watch: each receipt a branch prints shows
        in this terminal and in printer/receipts.txt. Every branch's printer setting
        (a node-local file) points at it, before the branches start."""
        out = self.root / RECEIPTS_FILE
        private_dir(out.parent)  # receipts name members

        def echo(p: Printout) -> None:
            print(f"\n----- 小票 receipt printed -----\n{show(p)}", flush=True)

        try:
            self.printer = PrinterListener("127.0.0.1", self._beside(PRINTER_PORT), out=out,
                                           echo=echo)
        except OSError:  # 9100 taken (a real printer service, another demo)
            self.printer = PrinterListener("127.0.0.1", 0, out=out, echo=echo)
        self.printer.start()
        for node in BRANCHES:
            save_config(self.data(node), PrinterConfig(
                host="127.0.0.1", port=self.printer.port,
                width=PRINTER_WIDTHS.get(node, 58), title=SHOP_TITLE))

    def start_mail(self) -> None:
        """The branches' gateways, in each one's node.toml [notify] before it starts:
        e-mail to the SMTP stand-in, which shows each message here and keeps it in
        mail/inbox.txt; SMS to a log gateway writing mail/sms.txt (shown by `watch`)."""
        box = self.root / MAIL_DIR
        private_dir(box)  # messages name members

        def arrived(msg: Any) -> None:
            text = (f"\n----- 邮件 e-mail arrived at the SMTP stand-in -----\nTo: "
                    f"{msg['To']}\nSubject: {msg['Subject']}\n{text_of(msg).strip()}\n")
            print(text, flush=True)
            with open(box / "inbox.txt", "a", encoding="utf-8") as f:
                f.write(text)

        try:
            self.smtp = SmtpStandIn(port=self._beside(SMTP_PORT), on_message=arrived).start()
        except OSError:  # 2525 taken
            self.smtp = SmtpStandIn(on_message=arrived).start()
        sms = box / "sms.txt"
        self._sms_seen = sms.stat().st_size if sms.exists() else 0
        for node in BRANCHES:
            (self.data(node) / "node.toml").write_text(
                f"[notify.email]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {self.smtp.port}\n"
                f"starttls = false\nsender = \"{SHOP_TITLE} <{node.lower()}@demo.example>\"\n"
                f"[notify.sms]\nkind = \"log\"\nfile = {json.dumps(str(sms))}\n",
                encoding="utf-8")

    def set_daily_report(self) -> None:
        """The owner's daily report for the whole chain, a few minutes from now (the
        chain's time zone), by e-mail: a rule the head office sets on its running node
        (the command line's route into it), so its node sends it, once."""
        from datetime import datetime, timedelta
        from zoneinfo import ZoneInfo

        at = datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(minutes=REPORT_AFTER_MIN)
        self.report_at = f"{at:%H:%M}"
        # Birthday greetings at the same time: to the members who consented only.
        body = {"daily": [{"branch": "all", "at": self.report_at, "to": [OWNER_MAIL]}],
                "shop": SHOP_TITLE, "greet_at": self.report_at}
        done = subprocess.run(
            [sys.executable, "-m", "peer", "rule", "set", "notifications", "--data",
             str(self.data(HEAD_OFFICE)), "--json-body", json.dumps(body, ensure_ascii=False)],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DemoError(f"setting the daily report failed: {done.stderr or done.stdout}")

    def show_sms(self) -> None:
        """Print what the log gateway wrote since last time (one-time codes...)."""
        sms = self.root / MAIL_DIR / "sms.txt"
        if not sms.exists() or sms.stat().st_size <= self._sms_seen:
            return
        with open(sms, "rb") as f:
            f.seek(self._sms_seen)
            new = f.read()
        self._sms_seen += len(new)
        for line in new.decode("utf-8", "replace").splitlines():
            print(f"\n----- 短信 SMS (the demo's log gateway) -----\n{line}", flush=True)

    def start(self) -> None:
        self.start_printer()
        self.start_mail()
        for node in BRANCHES:
            self.launch(node)
        for node in BRANCHES:
            self.wait(partial(self.up, node), f"{node} to start")
        self.wait(self.in_sync, "the branches to connect and sync")
        self.set_daily_report()

    def check_running(self, node: str) -> None:
        if self.procs[node].poll() is not None:
            log = (self.logs / f"{node}.log").read_text(errors="replace")[-3000:]
            raise DemoError(f"{node} stopped (exit {self.procs[node].returncode}); the end of "
                            f"{self.logs / f'{node}.log'}:\n{log}")

    def health(self, node: str) -> dict[str, Any] | None:
        self.check_running(node)
        return _get_json(f"http://127.0.0.1:{self.api[node]}/health")

    def ports(self) -> list[int]:
        return [*self.http.values(), *self.sync.values(), *self.api.values(),
                self.members_port]

    def _beside(self, port: int) -> int:
        """`port` for a stand-in of the demo's, or any free port (0) where the branches
        take it: `--port 9100` had the printer take SH01's counter port first, and SH01
        stopped on a bind error the demo could only call a timeout."""
        return 0 if port in self.ports() else port

    def ours(self, node: str) -> bool:
        """The node on this branch's data is the process we started: only then is what
        answers on its ports this demo's (another program may hold them)."""
        running = local.running(self.data(node))
        return running is not None and running.pid == self.procs[node].pid

    def up(self, node: str) -> bool:
        """Our node answers its health check and the counter page is served."""
        return (self.ours(node) and self.health(node) is not None
                and _status(self.url(node)) == 200)

    def in_sync(self) -> bool:
        states = [self.health(node) for node in BRANCHES]
        return all(states) and len({s["digest"] for s in states if s}) == 1

    def wait(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not check():
            if time.monotonic() > deadline:
                raise DemoError(f"timed out waiting for {what}; logs in {self.logs}")
            time.sleep(0.25)

    def watch(self) -> None:
        """Until interrupted: a branch that dies takes the demo down with a reason."""
        while True:
            for node in BRANCHES:
                self.check_running(node)
            self.show_sms()
            time.sleep(1)

    def stop(self) -> None:
        """SIGTERM to every branch (each stops its node and page cleanly), wait, and
        only then SIGKILL what is left of each process group."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{node} did not stop within {STOP_TIMEOUT_S:.0f} s: killed",
                      file=sys.stderr)
            # Children it may have left (a group only we know of): never orphans.
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self.printer is not None:
            self.printer.stop()
            self.printer = None
        if self.smtp is not None:
            self.smtp.stop()
            self.smtp = None

    # --- telling the user -----------------------------------------------------

    def announce(self, new: bool) -> None:
        facts = self.facts()
        owner, cashier = facts["owner"], facts["cashier"]
        print("\n三店演示已启动 · The three-branch demo is running "
              f"({'new demo data' if new else 'the same data as last time'}):\n")
        for node, name in BRANCHES.items():
            dials = f"  (dials {DIALS[node]})" if node in DIALS else ""
            pad = " " * 2 * (max(map(len, BRANCHES.values())) - len(name))  # CJK: 2 columns
            print(f"  {node} {name}{pad}   {self.url(node)}{dials}")
        print(f"\n  会员自助 members' self-service   {self.members_url()}  (served by "
              f"{HEAD_OFFICE}, HTTPS with the chain's certificate: {self.chain / 'ca.crt'}; "
              "a member signs in with their phone and the code the demo's SMS gateway "
              f"shows here and in {self.root / MAIL_DIR / 'sms.txt'}, or with card number "
              "and PIN)")
        print(f"\n登录 Log in as  {owner[0]} / {owner[1]}  (owner: every page), or "
              f"{cashier[0]} / {cashier[1]}  (a cashier).")
        if facts.get("manager"):  # demo data seeded before approvals bound the owner
            manager = facts["manager"]
            print(f"A manager, {manager[0]} / {manager[1]}, approves the owner's large "
                  "corrections and top-ups: nobody approves their own.")
        print(f"{facts['members']} members. Look for:")
        for name, phone, home, card, pin in facts["featured"]:
            with_pin = f", PIN {pin}" if pin else ""
            print(f"  {name}  phone {phone}  card {card}{with_pin}  (member of {home} "
                  f"{BRANCHES[home]})")
        if facts.get("lost_card"):
            print(f"  {facts['lost_card']}: a card reported lost")
        if facts.get("birthdays"):
            print(f"  birthdays today: {'、'.join(facts['birthdays'])}")
        if facts.get("members", 0) > MEMBERS:  # demo data from before it had one
            print(f"  {DUPLICATE[0]} ({DUPLICATE[1]}): registered at SH01 and HZ01 alike, "
                  "a duplicate member to merge (back office, 重复会员)")
        print("  预约 bookings: 技师 technicians T03 小王 / T07 阿梅 at SH01, T01 小李 (足疗 60 "
              "分钟 FOOT60) / T05 小周 at SH02, T02 小叶 at HZ01; each branch confirms its "
              "own technicians' slots (counter page 预约 /bookings)")
        if self.printer is not None:
            print(f"\n小票打印机 Receipt printer: {self.printer.address} (all three branches; "
                  f"HZ01 on 80 mm paper). Receipts of sales at the counters show here and "
                  f"in {self.root / RECEIPTS_FILE}; `crdtledger printer show --data "
                  f"{self.data('SH01')}` shows a branch's setting.")
        if self.smtp is not None:
            print(f"\n营业日报 The owner's daily report: at {self.report_at} (Asia/Shanghai, "
                  f"in {REPORT_AFTER_MIN} minutes) by e-mail to {OWNER_MAIL}, sent once by "
                  f"{HEAD_OFFICE}'s node to the SMTP stand-in 127.0.0.1:{self.smtp.port}; "
                  f"it shows here and in {self.root / MAIL_DIR / 'inbox.txt'}. SMS (codes, "
                  f"reminders) go to the log gateway: here and in "
                  f"{self.root / MAIL_DIR / 'sms.txt'}. `crdtledger notice history --data "
                  f"{self.data(HEAD_OFFICE)}` lists what a node sent. Birthday greetings "
                  "go at the same time to the members who consented (promo yes) only.")
        print(f"\nTry: top up 张伟 at SH01, then find him at SH02 and serve him there; the "
              f"settlement statement shows what the branches owe each other.\n"
              f"The command line works on a running branch too, e.g. "
              f".venv/bin/crdtledger status --data {self.data('SH02')}\n"
              f"Logs: {self.logs}. Ctrl-C stops the three branches; ./run demo again "
              "resumes the same data, ./run demo --fresh starts over.", flush=True)


def _die_with_parent() -> None:
    """In the child, before exec: if the demo itself is killed outright (no chance to
    stop its branches), Linux sends the branch a SIGTERM rather than orphan it."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


def _free(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind (aiohttp, uvicorn): a port a stopped demo's connections
        # left in TIME_WAIT is free; one a program listens on is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return dict(json.loads(r.read()))
    except (OSError, ValueError):
        return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the branches as cleanly as Ctrl-C


def _base_port(text: str) -> int:
    """The first of the demo's ten ports, refused before anything is created."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1024 <= port <= 65535 - 9:
        raise argparse.ArgumentTypeError(f"{port}: the ten ports must lie in 1024-65535")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo-data", help="where the branches keep data")
    parser.add_argument("--fresh", action="store_true", help="delete the demo data first")
    parser.add_argument("--port", type=_base_port, default=8470, metavar="BASE",
                        help="first of ten ports on 127.0.0.1: the counter pages are BASE, "
                        "BASE+1, BASE+2, the member pages BASE+9 (default 8470)")
    parser.add_argument("--exit", action="store_true",
                        help="stop the branches once they are up and in sync (for tests)")
    args = parser.parse_args(argv)
    demo = Demo(Path(args.data).resolve(), args.port)
    # Ctrl-C and SIGTERM both stop the branches in order. SIGINT explicitly: a shell
    # starts background jobs with it ignored, and Python then never raises on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        busy = [node for node in BRANCHES if local.in_use(demo.data(node))]
        if busy:
            # Before anything is deleted (--fresh) or rewritten (each branch's printer
            # and mail settings): a second demo on the same data deleted the running
            # one's stores, pointed its receipts at a printer that went with it, and
            # said "running" about the first demo's pages.
            raise DemoError(f"a demo already runs on {demo.root} ({', '.join(busy)} in "
                            "use): stop it first, or give another --data")
        taken = [port for port in demo.ports() if not _free(port)]
        if taken:
            # Before anything starts: a branch that cannot bind stops, but the pages and
            # health answers on those ports (another demo's, on other data) read as ours.
            raise DemoError(f"port {', '.join(map(str, taken))} on 127.0.0.1 already in use "
                            "(another demo, or another program): stop it, or give another "
                            "--port")
        new = args.fresh or not demo.created()
        if new:
            print(f"Creating the demo chain in {demo.root}: a certificate authority, three "
                  "branches, 60 members and a few days of history...", flush=True)
            demo.create()
        else:
            print(f"Demo data found in {demo.root}: starting the same branches again.",
                  flush=True)
        print("Starting the three branches (node and counter page each)...", flush=True)
        demo.start()
        demo.announce(new)
        if not args.exit:
            demo.watch()
    except KeyboardInterrupt:
        pass
    except DemoError as e:
        print(f"\ndemo: {e}", file=sys.stderr)
        return 1
    finally:
        if demo.procs:
            try:  # (printing can fail, e.g. output piped into `head`: stop them anyway)
                print("\nStopping the three branches...", flush=True)
            finally:
                demo.stop()
            print("Stopped. ./run demo resumes the same data.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
