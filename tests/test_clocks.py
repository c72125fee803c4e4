"""Clocks that are wrong (issue 13): card status follows causality, not timestamps; a
branch whose clock is off is told so and books by the chain's time; a clock set back
after running ahead mints at the right time at once and never repeats an id;
certificates tolerate the clocks shops have.

Each through the library and through the command line, the HTTP API, a real node's
log or the counter: real stores in tmp_path, real TLS on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from app_fixtures import OWNER, CounterApp
from conftest import cli_command, cli_env, run_cli
from cryptography import x509
from helpers import FakeClock, new_ledger, sync
from hypothesis import given
from hypothesis import strategies as st
from test_api import Api, serving, with_operators
from test_chain import Reply, call, identity

from crdtledger import peerclock, views
from crdtledger.core import NodeCore
from crdtledger.hlc import (
    CLOCK_OFF_LIMIT_MS,
    FRESH_ERAS,
    HybridClock,
    era_of,
    id_time_ms,
)
from crdtledger.ledger import Ledger
from crdtledger.peerclock import PeerClocks
from crdtledger.projection import _card_status
from crdtledger.storage import Storage
from crdtledger.sync import SyncSession
from peer.api import Standalone
from peer.chain import enrol, init_chain
from peer.node import Config, Node

DAY = 86_400_000


def real_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def ledgers(root: Path, *clocks: tuple[str, Callable[[], int]]) -> list[Ledger]:
    return [new_ledger(root, node, now_ms=clock) for node, clock in clocks]


# --- card status follows causality ----------------------------------------------------


def test_a_card_found_at_a_branch_with_the_right_clock_stays_found_everywhere(
        tmp_path: Path) -> None:
    """SH01's clock runs two days ahead: it reports the card lost; the owner at SH02
    (right clock) then reports it found. Found, everywhere, whatever the order the
    events reach a replica in (SH03 hears of both at once, from SH02)."""
    right, ahead = FakeClock(), FakeClock()
    ahead.advance_days(2)
    a, b, c = ledgers(tmp_path, ("SH01", ahead), ("SH02", right), ("SH03", right))
    try:
        m = b.add_member(b.owner, name="张伟", phone="13800000009")
        b.issue_card(b.owner, m, "C1")
        sync(a, b)
        a.report_lost(a.owner, "C1")
        sync(a, b)
        assert b.card("C1")["status"] == "lost"
        b.report_found(b.owner, "C1")  # an id two days older than the loss
        sync(b, c)
        sync(a, b)
        for ledger in (a, b, c):
            assert ledger.card("C1")["status"] == "active", ledger.node
        assert b.use_card("C1")["member"] == m
        # And lost again at the branch whose clock is ahead: the latest seen wins.
        a.report_lost(a.owner, "C1")
        sync(a, b)
        sync(b, c)
        assert [x.card("C1")["status"] for x in (a, b, c)] == ["lost"] * 3
    finally:
        for x in (a, b, c):
            x.close()


def test_concurrent_status_events_are_settled_by_their_clocks_alike_everywhere(
        tmp_path: Path) -> None:
    """Two branches that have not heard of each other's change: neither saw the other,
    so the later clock would win, the same at both; but a return is final (a loss
    report made without seeing it does not bring a card handed back into use:
    projection._card_status), the same at both too."""
    clock = FakeClock()
    a, b = ledgers(tmp_path, ("SH01", clock), ("SH02", clock))
    try:
        m = a.add_member(a.owner, name="张伟", phone="13800000009")
        a.issue_card(a.owner, m, "C1")
        sync(a, b)
        b.return_card(b.owner, "C1")
        clock.ms += 1000
        a.report_lost(a.owner, "C1")  # later, but without seeing the return
        sync(a, b)
        assert a.card("C1")["status"] == b.card("C1")["status"] == "returned"
    finally:
        a.close()
        b.close()


def test_status_events_from_before_causality_still_read_by_id() -> None:
    """Events written by earlier versions have no `seen`: each has seen every such
    event with a smaller id (the old rule). A new event wins over what it saw, even
    with a smaller id (its writer's clock is behind); one that did not see a later old
    event is concurrent with it, and the larger id wins, as it did."""
    card, e1, e2 = "0000000000000.SH01", "0000000000010.SH01", "0000000000020.SH02"
    old = [[card, "active", ""], [e1, "lost", "", "op"], [e2, "active", "", "op"]]
    assert _card_status(old) == "active"
    assert _card_status(old[:2]) == "lost"
    behind = "0000000000005.SH03"  # a clock behind: its id is the smallest but one
    assert _card_status([*old, [behind, "returned", "", "op", [e2]]]) == "returned"
    assert _card_status([*old[:2], [behind, "active", "", "op", [card]]]) == "lost"
    # Malformed events (only a misbehaving peer writes them) are passed over alike.
    assert _card_status([*old, [behind, "bogus", "", "op", [e2]], ["x"], 5]) == "active"


def test_found_through_the_api_after_a_loss_reported_from_a_clock_ahead(
        tmp_path: Path) -> None:
    right, ahead = FakeClock(), FakeClock()
    ahead.advance_days(2)

    async def main() -> None:
        a, b = (with_operators(x) for x in ledgers(tmp_path, ("SH01", ahead), ("SH02", right)))
        try:
            async with serving(Standalone(a)) as api_a, serving(Standalone(b)) as api_b:
                boss_a, boss_b = await api_a.login("boss", "boss-secret"), await api_b.login(
                    "boss", "boss-secret")
                status, body = await api_b.call("POST", "/members", {
                    "name": "王芳", "phone": "13812345678"}, token=boss_b)
                assert status == 201, body
                await api_b.call("POST", f"/members/{body['member_id']}/cards",
                                 {"card_no": "C1"}, token=boss_b)
                sync(a, b)
                status, card = await api_a.call("POST", "/cards/C1/lost", token=boss_a)
                assert (status, card["status"]) == (200, "lost")
                sync(a, b)
                status, card = await api_b.call("POST", "/cards/C1/found", token=boss_b)
                assert (status, card["status"]) == (200, "active")
                sync(a, b)
                for api, token in ((api_a, boss_a), (api_b, boss_b)):
                    status, card = await api.call("GET", "/cards/C1", token=token)
                    assert (status, card["status"]) == (200, "active")
        finally:
            a.close()
            b.close()

    asyncio.run(main())


# --- a clock set back after running ahead -------------------------------------------------


def test_a_clock_fixed_after_running_ahead_mints_at_the_right_time_at_once(
        tmp_path: Path) -> None:
    """SH01's clock ran two days ahead, then was set right. Its next sales are booked
    today, not two days ahead until real time catches up; no id repeats, in this run
    or the next, and SH02 takes every record (no rule of its breaks)."""
    clock, other = FakeClock(), FakeClock()
    clock.advance_days(2)
    a, b = ledgers(tmp_path, ("SH01", clock), ("SH02", other))
    try:
        m = a.add_member(a.owner, name="张伟", phone="13800000009")
        ahead = [a.topup(a.owner, m, 1000 + i) for i in range(3)]
        sync(a, b)
        clock.advance_days(-2)  # the owner sets the clock right
        fixed = [a.topup(a.owner, m, 100 + i) for i in range(3)]
        a.issue_card(a.owner, m, "C1")
        for e in fixed:
            assert abs(id_time_ms(e["id"]) - clock.ms) < 1000
            assert a.storage.day_of(e["at"]) == a.today()
        sync(a, b)
        assert a.faults() == b.faults() == []
        assert b.balance(m) == a.balance(m)
        assert b.balance(m)["cash"] == sum(e["amount"] for e in ahead + fixed)
        today = views.daily_report(b, a.today())
        assert today["topup_cash"] == sum(e["amount"] for e in fixed)
        a.close()
        # A restart keeps the new era: the next ids are still today's, and new.
        a = Ledger.open(tmp_path / "sh01", now_ms=clock)
        again = a.topup(a.owner, m, 7)
        assert abs(id_time_ms(again["id"]) - clock.ms) < 3000
        ids = [e["id"] for e in ahead + fixed + [again]]
        assert len(set(ids)) == len(ids)
        sync(a, b)
        assert b.faults() == [] and b.balance(m) == a.balance(m)
    finally:
        a.close()
        b.close()


def test_eras_never_give_an_id_twice_however_the_clock_jumps() -> None:
    clock = FakeClock()
    hlc = HybridClock("SH01", now_ms=clock)
    seen: set[int] = set()
    for step in [2 * DAY, -2 * DAY, 3 * DAY, -DAY, -DAY, 0, 5 * DAY, -5 * DAY] * 10:
        clock.ms += step
        for _ in range(5):
            ts = hlc.now()
            assert ts not in seen
            seen.add(ts)
    # An era is taken again only once the wall clock has passed what it minted.
    assert len({era_of(ts) for ts in seen}) <= 64


def test_own_ids_that_come_back_from_peers_are_never_minted_again() -> None:
    """A node restored from a backup gets back what it wrote after it, perhaps in
    another era, perhaps far ahead: the clock marks them minted."""
    clock = FakeClock()
    hlc = HybridClock("SH01", now_ms=clock, eras=FRESH_ERAS)
    other_era = (clock.ms << 16) | (1 << 10)  # era 1, at the wall clock
    hlc.minted(other_era)
    far = (clock.ms + 3 * DAY) << 16  # this era, three days ahead
    hlc.minted(far)
    minted = [hlc.now() for _ in range(3)]
    assert far not in minted and other_era not in minted
    assert abs((minted[0] >> 16) - clock.ms) < 10  # a new era, at the right time
    assert era_of(minted[0]) not in (0, 1)


def test_the_command_line_books_at_the_right_time_after_the_clock_is_fixed(
        tmp_path: Path) -> None:
    data = tmp_path / "sh01"
    assert run_cli("init", "--node", "SH01", data=data).code == 0
    # The store's clock ran two days ahead before the machine's clock was fixed.
    store = Storage(data)
    with store.transaction():
        store.set_meta("hlc", str((real_ms() + 2 * DAY) << 16))
    store.close()
    member = run_cli("member", "add", "--name", "李雷", "--phone", "13700001111", "--json",
                     data=data).json()["member_id"]
    entry = run_cli("topup", "--member", member, "--amount", "10.00", "--json",
                    data=data).json()
    assert abs(entry["at"] - real_ms()) < 60_000, entry
    assert abs(id_time_ms(entry["id"]) - real_ms()) < 60_000
    report = run_cli("report", "daily", "--json", data=data).json()
    assert report["topup_cash"] == 1000


# --- what the peers say of a clock ------------------------------------------------------


def test_two_branches_that_disagree_are_both_told_and_neither_follows() -> None:
    a = PeerClocks()
    assert a.heard("SH02", 2 * DAY, 1) is True
    assert not a.verdict.off and a.verdict.disagree == ("SH02",)
    assert a.agree() == 1


def test_a_majority_corrects_a_clock_and_a_hub_speaks_for_its_branches() -> None:
    c = PeerClocks()
    c.heard("HQ", -2 * DAY, 3)  # the hub, with two branches agreeing with it
    assert c.verdict.off_ms == -2 * DAY
    assert c.agree() == 2  # the hub agrees with the corrected time
    three = PeerClocks()
    three.heard("A", 5 * 60_000, 1)
    three.heard("B", 5 * 60_000 + 30, 1)
    assert three.verdict.off_ms == 5 * 60_000
    three.heard("C", 0, 1)  # now two say 0 (with this one): in step again
    assert not three.verdict.off and three.verdict.disagree == ("A", "B")
    small = PeerClocks()
    small.heard("A", CLOCK_OFF_LIMIT_MS - 1, 5)
    assert not small.verdict.off and small.verdict.disagree == ()


def test_a_clock_set_right_needs_no_correction_at_once_and_a_lost_peer_keeps_it() -> None:
    c = PeerClocks()
    c.tick(1_000_000 + 2 * DAY, 100.0)
    c.heard("HQ", -2 * DAY, 4)
    assert c.verdict.off_ms == -2 * DAY
    c.forget("HQ")  # the link drops: the correction holds
    assert c.verdict.off_ms == -2 * DAY
    c.tick(1_000_000 + 2 * DAY + 10_000, 110.0)  # ten seconds, nothing set
    assert c.verdict.off_ms == -2 * DAY
    assert c.tick(1_000_000 + 20_000, 120.0) is True  # the owner set the clock right
    assert c.verdict.off_ms == 0
    c.heard("HQ", 50, 4)
    assert not c.verdict.off


@given(st.dictionaries(st.sampled_from(["A", "B", "C", "D", "E"]),
                       st.tuples(st.integers(-3 * DAY, 3 * DAY) | st.integers(
                           -CLOCK_OFF_LIMIT_MS - 2, CLOCK_OFF_LIMIT_MS + 2),
                                 st.integers(1, 9)), min_size=1))
def test_the_verdict_is_the_weighted_vote_of_every_hello(
        samples: dict[str, tuple[int, int]]) -> None:
    """Whatever the offsets (the common case, every peer within the limit, is judged
    without weighing the votes): the verdict and `agree` are those of the rule."""
    c = PeerClocks()
    for peer, (offset, agree) in samples.items():
        c.heard(peer, offset, agree)
    limit = CLOCK_OFF_LIMIT_MS
    votes = sorted([(0, 1), *samples.values()])
    total = sum(w for _, w in votes)
    off = 0
    if any(2 * sum(w for o, w in votes if side * o > limit) > total for side in (1, -1)):
        off = next(o for i, (o, _) in enumerate(votes)
                   if 2 * sum(w for _, w in votes[:i + 1]) > total)
    assert c.verdict.off_ms == off
    assert c.verdict.disagree == tuple(sorted(p for p, (o, _) in samples.items()
                                              if abs(o) > limit))
    assert c.agree() == 1 + sum(1 for o, _ in samples.values() if abs(o - off) <= limit)


@pytest.mark.parametrize("hub", [False, True])
def test_a_branch_that_claims_many_clocks_agree_moves_nobody(tmp_path: Path, hub: bool
                                                             ) -> None:
    """A lying branch (valid certificate) says its time, two days ahead, is what a
    thousand clocks agree on. Its word is taken for its own clock only: the branch
    that hears it is told they disagree and keeps its own time. The chain's hub (a
    head-office certificate) is believed when it speaks for the branches behind it."""
    chain = tmp_path / "chain"
    init_chain(chain, "test")
    for node in ("SH01", "SH02"):
        Ledger.create(tmp_path / node, node, "test")
        enrol(chain, tmp_path / node, node, head_office=hub and node == "SH02")
    a = Ledger.open(tmp_path / "SH01")
    liar = Ledger.open(tmp_path / "SH02", now_ms=Shifted(2 * DAY))
    try:
        liar.add_member(liar.owner, name="x", phone="13800000000")
        sync(a, liar)  # SH01 holds SH02's signed log, hence its certificate
        liar.clock.agree = 1000  # what its hellos will say
        core = NodeCore(a)
        core.start(0.0)
        core.link_opened(1, "SH02", dialer="SH01", now=0.0)
        theirs = SyncSession(liar, expect_node="SH01")
        theirs.start()
        mine = core.session("SH02")
        assert mine is not None
        for _ in range(4):  # a few rounds of hellos both ways
            core.receive(1, theirs.data_to_send(), 1.0)
            for frame in mine.data_to_send():
                theirs.receive(frame)
        status = core.clock_status()
        if hub:
            assert abs(status["off_ms"] - 2 * DAY) < 60_000
        else:
            assert status["off_ms"] == 0 and "SH02" in status["disagree"]
            assert abs(a.clock.wall() - real_ms()) < 60_000
    finally:
        a.close()
        liar.close()


# --- nodes on real TLS, in one event loop ---------------------------------------------------


class SkewedLedger(Ledger):
    """Ledger.open as a node calls it, with a machine clock per data directory."""

    clocks: ClassVar[dict[str, Callable[[], int]]] = {}

    @classmethod
    def open(cls, data_dir: Path | str, *args: Any, **kwargs: Any) -> Ledger:
        clock = cls.clocks.get(Path(data_dir).name)
        if clock is not None:
            kwargs["now_ms"] = clock
        return Ledger.open(data_dir, *args, **kwargs)


@pytest.fixture
def skewed(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Callable[[], int]]]:
    clocks: dict[str, Callable[[], int]] = {}
    monkeypatch.setattr(SkewedLedger, "clocks", clocks)
    monkeypatch.setattr("peer.node.Ledger", SkewedLedger)
    yield clocks


class Shifted:
    """This machine's clock: the real one moved by `ms`, which the test changes."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return real_ms() + self.ms


def make_store(root: Path, chain: Path, node: str) -> Path:
    data = root / node
    Ledger.create(data, node, "test")
    enrol(chain, data, node, head_office=node == "HQ")
    if node == "HQ":  # the others learn of the owner by sync
        with Ledger.open(data) as ledger:
            ledger.add_operator(ledger.owner, *OWNER, roles=["owner"])
    return data


@asynccontextmanager
async def running(data: Path, *peers: Node) -> AsyncIterator[Node]:
    node = Node(Config(data, listen=("127.0.0.1", 0), api=("127.0.0.1", 0), mdns=False,
                       anti_entropy_s=0.1,
                       peers=[f"wss://127.0.0.1:{p.sync_port}" for p in peers]))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def api_of(node: Node) -> AsyncIterator[tuple[Api, str]]:
    async with aiohttp.ClientSession() as http:
        api = Api(http, f"http://127.0.0.1:{node.api_port}/api")
        yield api, await api.login(*OWNER)


async def cli_status(data: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cli_command("status", "--data", data), env=cli_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def clock_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING
            and r.getMessage().startswith("clock: this machine's clock is")]


def test_a_branch_whose_clock_runs_ahead_is_told_and_books_by_the_chain(
        tmp_path: Path, skewed: dict[str, Callable[[], int]],
        caplog: pytest.LogCaptureFixture) -> None:
    """SH03's clock runs two days ahead; it reaches only the hub HQ, whose clock and
    SH02's agree. SH03 is told (one warning in its log, `status`, the API), mints and
    books by the chain's time, and stops doing so as soon as its clock is set right."""
    caplog.set_level(logging.INFO, logger="crdtledger.node")
    chain = tmp_path / "chain"
    init_chain(chain, "test")
    hq, sh02, sh03 = (make_store(tmp_path, chain, n) for n in ("HQ", "SH02", "SH03"))
    wrong = Shifted(2 * DAY)
    skewed["SH03"] = wrong

    async def main() -> None:
        async with running(hq) as a, running(sh02, a):
            await until(lambda: a.ledger.clock.agree == 2, "HQ and SH02 agreeing")
            async with running(sh03, a) as c:
                await until(lambda: c.core.clock_status()["off_ms"] != 0, "SH03 told")
                assert abs(c.core.clock_status()["off_ms"] + 2 * DAY) < 60_000
                assert a.core.clock_status()["off_ms"] == 0
                assert abs(c.ledger.clock.wall() - real_ms()) < 60_000
                # Its sales are booked by the chain's time.
                mid = await c.perform(lambda: c.ledger.add_member(
                    c.ledger.owner, name="张伟", phone="13812345678"))
                entry = await c.perform(lambda: c.ledger.topup(c.ledger.owner, mid, 5000))
                assert abs(entry["at"] - real_ms()) < 60_000
                await until(lambda: a.digest() == c.digest(), "HQ has SH03's sale")
                today = a.ledger.storage.day_of(real_ms())
                assert views.daily_report(a.ledger, today)["topup_cash"] == 5000
                # The API and the command line say so.
                async with api_of(c) as (api, token):
                    status, body = await api.call("GET", "/sync/status", token=token)
                    assert status == 200 and abs(body["clock"]["off_ms"] + 2 * DAY) < 60_000
                    assert body["clock"]["limit_ms"] == CLOCK_OFF_LIMIT_MS
                out = await cli_status(sh03)
                assert "CLOCK: this machine's clock is 2 d 0 h ahead of the chain's time" in out
                assert "CLOCK" not in await cli_status(hq)
                assert len(clock_warnings(caplog)) == 1, clock_warnings(caplog)
                # The owner sets the clock right: no correction any more, at once.
                wrong.ms = 0
                await until(lambda: c.core.clock_status()["off_ms"] == 0, "in step again")
                again = await c.perform(lambda: c.ledger.topup(c.ledger.owner, mid, 1))
                assert abs(entry["at"] - again["at"]) < 60_000
                assert len(clock_warnings(caplog)) == 1
                assert any(r.getMessage() == "clock: in step with the peers again"
                           for r in caplog.records)

    asyncio.run(main())


@pytest.mark.asyncio
async def test_the_counter_says_when_this_machines_clock_is_off(
        counter_app: CounterApp, skewed: dict[str, Callable[[], int]]) -> None:
    """SH01 runs the counter; the two branches it hears from agree on a time two days
    behind its clock. The banner says so in the counter's language; selling goes on,
    booked by the chain's time."""
    app = counter_app
    await app.login(*OWNER)
    await app.user.should_not_see("本机时钟")
    root = app.data_dir.parent
    for name in ("SH02", "SH03"):
        Ledger.create(root / name, name, "test")
        # Enrolled a week ago (a branch newly enrolled today is booked no earlier).
        enrol(root / "chain", root / name, name,
              not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=7))
        skewed[name] = Shifted(-2 * DAY)
    node = app.shop.node
    async with running(root / "SH02", node), running(root / "SH03", node):
        await until(lambda: node.core.clock_status()["off_ms"] != 0, "SH01 told")
        await app.user.open("/office/sync")
        await app.user.should_see("本机时钟比连锁时间快 2 天 0 小时")
        await app.user.should_see("收银照常")
        mid = app.ledger.add_member(app.node_owner, name="张伟", phone="13812345678")
        entry = app.ledger.topup(app.node_owner, mid, 100)
        assert abs(entry["at"] - (real_ms() - 2 * DAY)) < 60_000


# --- certificates and the clocks shops have ---------------------------------------------


def cert_of(data: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data / "tls" / "node.crt").read_bytes())


def test_a_certificate_starts_a_day_before_it_is_issued(tmp_path: Path) -> None:
    """A branch whose clock is hours behind the head office's PC accepts the
    certificates enrolled there today (they used to start five minutes back)."""
    assert run_cli("chain", "init", "--out", tmp_path / "chain", "--name", "test").code == 0
    assert run_cli("init", "--node", "SH01", "--chain", tmp_path / "chain",
                   data=tmp_path / "sh01").code == 0
    now = dt.datetime.now(dt.UTC)
    assert cert_of(tmp_path / "sh01").not_valid_before_utc <= now - dt.timedelta(hours=23)
    ca = x509.load_pem_x509_certificate((tmp_path / "chain" / "ca.crt").read_bytes())
    assert ca.not_valid_before_utc <= now - dt.timedelta(hours=23)


def test_a_peer_whose_clock_is_behind_its_certificate_still_connects(
        tmp_path: Path) -> None:
    """Over real TLS: a certificate that starts ten minutes from now on this machine's
    clock (the CA's PC ran ahead, or this one is behind) is taken."""
    chain = tmp_path / "chain"
    init_chain(chain, "test")
    enrol(chain, tmp_path / "server", "SH01")
    enrol(chain, tmp_path / "early", "SH02",
          not_before=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))
    reply, seen = call(identity(tmp_path / "server"),
                       identity(tmp_path / "early").client_ssl_context())
    assert isinstance(reply, Reply), reply
    assert seen == ["SH02"]


def test_a_certificate_refused_for_its_dates_is_logged_naming_the_clock(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Beyond the margin the peer is refused, and both logs say why at warning level
    (OpenSSL's refusal was logged at debug only); each says it once, not at every
    redial (the refusing side once a minute: a retired branch's 2,000 requests on one
    connection wrote 2,000 warnings in a second)."""
    caplog.set_level(logging.DEBUG, logger="crdtledger.node")
    chain = tmp_path / "chain"
    init_chain(chain, "test")
    Ledger.create(tmp_path / "SH01", "SH01", "test")
    enrol(chain, tmp_path / "SH01", "SH01")
    Ledger.create(tmp_path / "SH02", "SH02", "test")
    enrol(chain, tmp_path / "SH02", "SH02",
          not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=3))

    def warned(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and text in r.getMessage()]

    async def main() -> None:
        async with running(tmp_path / "SH01") as a, running(tmp_path / "SH02", a):
            await until(lambda: len(warned("refused a peer")) >= 1, "a dial refused")
            await asyncio.sleep(3)  # redials meanwhile (backoff 0.25 s, doubling)
            refused = warned("refused a peer")
            assert len(refused) == 1 and "this clock is behind" in refused[0], refused
            told = warned("refused this node")
            assert len(told) == 1, told
            assert "the certificate of node SH02 is valid only from" in told[0]
            assert "check the clocks" in told[0]
            assert a.connected() == []

    asyncio.run(main())


def test_an_operation_is_judged_on_the_day_and_minute_its_entries_are_booked(
        tmp_path: Path) -> None:
    """A sale begun at 23:59:59.999 on the last day of a coupon and of a price list
    was judged on that day (coupon taken, January's price) and booked on the next,
    its id minted a millisecond later: an operation now keeps one instant
    (`HybridClock.pinned`, taken by operations.run), its first id's."""
    from zoneinfo import ZoneInfo

    from crdtledger import operations
    from crdtledger.hlc import id_time_ms

    berlin = ZoneInfo("Europe/Berlin")
    midnight = int(dt.datetime(2026, 2, 1, tzinfo=berlin).timestamp() * 1000)
    ticking = {"ms": midnight - 3_600_000, "step": 0}

    def clock() -> int:  # time passes while an operation runs: a millisecond a read
        ms = ticking["ms"]
        ticking["ms"] += ticking["step"]
        return ms

    a = new_ledger(tmp_path, "SH01", now_ms=clock, timezone="Europe/Berlin")
    dear = {k: dict(v) for k, v in a.rule("services").items()}
    dear["FOOT60"]["price"] = 20000
    a.set_rule(a.owner, "services", dear, effective_from="2026-02-01")
    m = a.add_member(a.owner, name="A", phone="13800138000")
    a.topup(a.owner, m, 100_000)
    coupon = a.issue_coupon(a.owner, m, off=5000, valid_to="2026-01-31")["coupon"]
    ticking.update(ms=midnight - 1, step=1)
    sale = operations.run(a, a.owner, "debit", {"member": m, "service": "FOOT60",
                                                "coupon": coupon})
    assert a.storage.day_of(id_time_ms(sale["id"])) == "2026-01-31"
    assert sale["coupon"] == coupon and sale["gross"] != 20000  # January's, as judged
    ticking["step"] = 0
    assert a.clock.wall() == ticking["ms"] >= midnight  # the pin ends with the operation


def test_an_activitys_hours_are_judged_by_the_time_its_check_in_carries(
        tmp_path: Path) -> None:
    """SH02's clock is 90 s behind SH01's (under the limit), and SH01's entry of
    00:00:30 has reached it: its next id is past its clock. A check-in there was
    judged by the clock (23:59, inside an activity running to midnight) and booked by
    the id (00:00:30, after it)."""
    from zoneinfo import ZoneInfo

    from helpers import name_branches

    from crdtledger.errors import LedgerError

    shanghai = ZoneInfo("Asia/Shanghai")

    def ms(*when: int) -> int:
        return int(dt.datetime(*when, tzinfo=shanghai).timestamp() * 1000)

    ca, cb = FakeClock(ms(2026, 1, 31, 12)), FakeClock(ms(2026, 1, 31, 12) - 90_000)
    a, b = new_ledger(tmp_path, "SH01", now_ms=ca), new_ledger(tmp_path, "SH02", now_ms=cb)
    name_branches(a, "SH01", "SH02")
    a.set_activity(a.owner, "JAN", {"name": "一月打卡", "from": "2026-01-01T00:00",
                                    "to": "2026-02-01T00:00", "points": 10,
                                    "repeat": "daily", "per_day": 1})
    m = a.add_member(a.owner, name="A", phone="13800138000")
    sync(a, b)
    ca.ms = ms(2026, 2, 1, 0, 0, 30)
    cb.ms = ca.ms - 90_000
    a.topup(a.owner, m, 1000)
    sync(a, b)
    with pytest.raises(LedgerError, match="runs from"):
        b.checkin(b.owner, "JAN", m)


def test_a_certificate_that_starts_ahead_of_this_clock_is_said(tmp_path: Path) -> None:
    """Head office's PC ran three days ahead when it enrolled SH02: the certificate
    starts two days on, and SH02 (its own clock right) books from then on (nothing is
    booked before a branch's enrolment). That was silent: its takings went into a day
    to come. `status` says it, and what to check."""
    init_chain(tmp_path / "chain", "acme")
    Ledger.create(tmp_path / "SH02", "SH02", "acme")
    enrol(tmp_path / "chain", tmp_path / "SH02", "SH02",
          not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    with Ledger.open(tmp_path / "SH02") as ledger:
        status = NodeCore(ledger).clock_status()
        assert status["floor_ahead_ms"] > 2 * DAY - 60_000
        said = peerclock.tell(status)
        assert said is not None and "2 d" in said and "head office's" in said
    with Ledger.open(tmp_path / "SH02", now_ms=lambda: real_ms() + 3 * DAY) as ledger:
        assert NodeCore(ledger).clock_status()["floor_ahead_ms"] == 0  # in step


@pytest.mark.asyncio
async def test_the_counter_says_when_this_clock_is_before_the_branch_may_book(
        counter_app: CounterApp) -> None:
    app = counter_app
    app.ledger.clock.floor_ms = real_ms() + 2 * DAY + 60_000  # a certificate starting then
    await app.login(*OWNER)
    await app.user.open("/office/sync")
    await app.user.should_see("本机时钟比本店最早可记账的时间（开通或上次月结）慢 2 天")
