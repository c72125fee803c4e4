"""Refusals of the command line that say what is wrong (a tester's findings, 7 December):
working hours past a day were "hours must be text", an amount too large "a signed
amount like -1.50" with no word of its size, and a read (`balance`) that a stalled
node did not answer said it "may still do it", as if something had been written.
The real command line on real data directories; the stalled node is a real node
process stopped with SIGSTOP."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster import cluster, wait_for
from conftest import Cli

from peer import cli as peer_cli
from peer import local


@pytest.mark.parametrize("hours", ["25:00-26:00", "24:00-25:00", "9:00-22:00", "abc"])
def test_hours_past_a_day_are_said_as_hours(cli: Cli, make_node: Callable[..., Path],
                                            hours: str) -> None:
    data = make_node("SH01")
    r = cli("technician", "add", "--code", "T01", "--name", "小李", "--services", "FOOT60",
            "--hours", hours, data=data)
    assert r.code == 1 and "Traceback" not in r.err, r
    assert "must be text" not in r.err, r.err
    assert "HH:MM-HH:MM within one day, from 00:00 to 24:00" in r.err, r.err
    assert "the start before the end" in r.err, r.err
    assert cli("technician", "list", "--json", data=data).json() == []  # nothing added
    ok = cli("technician", "add", "--code", "T01", "--name", "小李", "--services", "FOOT60",
             "--hours", "10:00-24:00", data=data)
    assert ok.code == 0, ok.err


@pytest.mark.parametrize("change", ["9999999999999.99", "-100000000000"])
def test_an_amount_too_large_says_the_limit(cli: Cli, make_node: Callable[..., Path],
                                            change: str) -> None:
    data = make_node("SH01")
    member = cli("member", "add", "--name", "王芳", "--phone", "13800000001", "--json",
                 data=data).json()["member_id"]
    before = cli("history", "--member", member, "--json", data=data).json()
    r = cli("correct", "--member", member, "--change", change, "--reason", "x", data=data)
    assert r.code == 1 and "Traceback" not in r.err, r
    assert "at most 99999999999.99" in r.err, r.err
    assert cli("history", "--member", member, "--json", data=data).json() == before


def test_a_read_a_stopped_node_does_not_answer_says_nothing_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A real node, stopped (SIGSTOP: a PC that froze): `balance` (routed to it) says it
    did not answer and that nothing was written; a `topup` still says it may be done."""
    monkeypatch.setattr(local, "TIMEOUT_S", 1.0)  # not two minutes
    with cluster(tmp_path) as c:
        sh = c.add("SH01").start()
        member = sh.cli("member", "add", "--name", "王芳", "--phone", "13800000001",
                        "--json").json()["member_id"]
        assert sh.proc is not None
        os.kill(sh.proc.pid, signal.SIGSTOP)
        try:
            said = {}
            for name, args in (("balance", ["balance", "--member", member]),
                               ("topup", ["topup", "--member", member, "--amount", "1.00"])):
                code = peer_cli.main([*args, "--data", str(sh.data)])
                said[name] = (code, capsys.readouterr())
        finally:
            os.kill(sh.proc.pid, signal.SIGCONT)
        code, out = said["balance"]
        assert code == 1 and out.out == "", out
        assert "did not answer" in out.err and "nothing was written" in out.err, out.err
        assert "may still do it" not in out.err, out.err
        code, out = said["topup"]
        assert code == 1 and "may still do it" in out.err, out
        # The write not answered was done once the node went on: so its sentence.
        wait_for(lambda: sh.cli("balance", "--member", member, "--json").json()["cash"]
                 == 100, what="the top-up sent before the node went on")
