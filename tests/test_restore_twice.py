"""Two PCs must never sell as one branch: the same backup restored twice, or restored
while the PC it was taken from still runs (the sixteenth wave's left case: a second
restore unlocked by head office's file carrying the first restore's sales forked
SH01 with 420.00 at stake).

What tells them apart is the client epoch every record carries: a restore that ends
its wait writes under the next one (Replica._end_restore), so a record of this
branch's log written under another epoch than this store's was written on another
PC. Real SQLite stores, real sealed backups and sync files, the command line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import new_ledger, sync
from test_restore_proof import _cash

from crdtledger import views
from crdtledger.backups import restore, write_backup
from crdtledger.errors import NotCaughtUp
from crdtledger.ledger import Ledger
from crdtledger.syncfile import export_file, import_file
from crdtledger.writerules import epoch_of

YUAN = 100
START = 500 * YUAN
AT_STAKE = 420 * YUAN


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Ledger, Ledger, Ledger, str]]:
    """SH01 with a member holding 500.00, SH02 (the third branch) and HQ, in sync."""
    a, b, hq = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "HQ"))
    m = a.add_member(a.owner, name="张伟", phone="13812345678")
    a.topup(a.owner, m, START)
    sync(a, b)
    sync(a, hq)
    yield a, b, hq, m
    for ledger in (a, b, hq):
        ledger.close()


def _restore(tmp_path: Path, bk: Path, name: str) -> Ledger:
    restore(bk, tmp_path / name)
    r = Ledger.open(tmp_path / name)
    assert r.restored
    return r


def _hq_file(tmp_path: Path, hq: Ledger, name: str) -> Path:
    path = tmp_path / f"{name}.sync"
    export_file(hq, path)
    return path


def test_a_second_restore_of_the_same_backup_waits_while_the_first_sells(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """The 420.00 case: SH01's PC dies after a sale head office heard of; its backup is
    restored on a new PC, which catches up and sells 420.00; the same backup restored
    on a second PC by mistake is shown the first's sales by head office's file (and by
    a session): it must not sell, and say why; nothing forks anywhere."""
    a, b, hq, m = chain
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    a.debit(a.owner, m, amount=10 * YUAN)  # after the backup; head office hears of it
    sync(a, hq)
    a.close()  # the PC dies
    first = _restore(tmp_path, bk, "new-pc")
    second = None
    try:
        import_file(first, _hq_file(tmp_path, hq, "hq-1"))
        assert first.restored is None
        first.debit(first.owner, m, amount=AT_STAKE)
        sync(first, hq)
        second = _restore(tmp_path, bk, "dup-pc")
        got = import_file(second, _hq_file(tmp_path, hq, "hq-2"))
        assert second.restored, "the second restore was unlocked by the first's records"
        assert "another PC" in got["not_selling"]
        with pytest.raises(NotCaughtUp, match="another PC restored"):
            second.debit(second.owner, m, amount=10 * YUAN)
        sync(second, hq)  # a live session says no more
        assert second.restored
        with pytest.raises(NotCaughtUp, match="another PC restored"):
            second.debit(second.owner, m, amount=10 * YUAN)
        # The first sells on, and every branch agrees: no fork, no money twice.
        first.debit(first.owner, m, amount=10 * YUAN)
        for x in (hq, b):
            sync(first, x)
            sync(second, x)
        for x in (first, second, hq, b):
            assert x.faults() == [], x.node
        for x in (first, hq, b):
            assert _cash(x, m) == START - 10 * YUAN - AT_STAKE - 10 * YUAN, x.node
    finally:
        first.close()
        if second is not None:
            second.close()


def test_the_owner_lets_the_second_sell_once_the_first_is_gone(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """The first restored PC died too and no newer backup exists: the second waits
    until the owner says so (restore --sell-now), then sells past all the first wrote
    under yet another epoch, and no branch sees a fork."""
    a, b, hq, m = chain
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    a.close()
    first = _restore(tmp_path, bk, "new-pc")
    first.waive_catch_up()
    first.debit(first.owner, m, amount=AT_STAKE)
    sync(first, hq)
    first.close()  # dies
    second = _restore(tmp_path, bk, "dup-pc")
    sync(second, hq)
    assert second.restored
    second.close()
    got = run_cli("restore", "--sell-now", data=tmp_path / "dup-pc")
    assert got.code == 0, got.err
    with Ledger.open(tmp_path / "dup-pc") as second:
        assert second.restored is None
        second.debit(second.owner, m, amount=50 * YUAN)
        sync(second, hq)
        sync(second, b)
        assert hq.faults() == [] and b.faults() == []
        assert _cash(hq, m) == _cash(b, m) == START - AT_STAKE - 50 * YUAN


def _restored_and_caught_up(tmp_path: Path, a: Ledger, hq: Ledger, m: str) -> Ledger:
    """SH01 backed up, then a sale of 10.00 that HQ holds; the backup restored on a
    new PC and caught up from HQ's file (its wait ended)."""
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    a.debit(a.owner, m, amount=10 * YUAN)
    sync(a, hq)
    r = _restore(tmp_path, bk, "new-pc")
    try:
        import_file(r, _hq_file(tmp_path, hq, "hq-1"))
    except BaseException:
        r.close()
        raise
    assert r.restored is None
    return r


def test_the_pc_a_backup_was_taken_from_stops_when_its_restore_sells(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """The backup restored on a second PC while the first still runs: the restore
    cannot tell a running PC from a dead one, so it sells once caught up; the first PC,
    handed the restore's records, stops selling, says so, and `status` says another PC
    runs as the branch. No fork: its next sale would have been one."""
    a, b, hq, m = chain
    r = _restored_and_caught_up(tmp_path, a, hq, m)
    try:
        r.debit(r.owner, m, amount=AT_STAKE)
        sync(r, hq)
        sync(hq, a)  # the first PC hears of it
        with pytest.raises(NotCaughtUp, match="another PC sells as branch SH01"):
            a.debit(a.owner, m, amount=10 * YUAN)
        assert "another PC" in (views.trust_status(a)["another_pc"] or "")
        for x in (a, r, hq):
            sync(x, b)
        for x in (a, r, hq, b):
            assert x.faults() == [], x.node
            assert _cash(x, m) == START - 10 * YUAN - AT_STAKE, x.node
    finally:
        r.close()
    data = a.storage.dir
    a.close()
    got = run_cli("status", data=data)
    assert got.code == 0 and "ANOTHER PC sells as SH01" in got.out, got.out
    # The other PC switched off for good, the owner's word lets this one sell again,
    # under an epoch past the restore's (were that PC on again, it would stop).
    got = run_cli("restore", "--sell-now", data=data)
    assert got.code == 0, got.err
    with Ledger.open(data) as a:
        assert views.trust_status(a)["another_pc"] is None
        assert epoch_of(a.storage.client_id) == 2
        a.debit(a.owner, m, amount=10 * YUAN)
        sync(a, hq)
        assert hq.faults() == [] and _cash(hq, m) == START - 20 * YUAN - AT_STAKE


def test_a_restore_sees_the_pc_it_was_taken_from_still_writing(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """Caught up but not sold yet, the restore is handed more of the first PC's sales
    (under the backup's epoch, not its own): the first still runs, so the restore
    stops, and sells nothing that would fork."""
    a, b, hq, m = chain
    r = _restored_and_caught_up(tmp_path, a, hq, m)
    try:
        a.debit(a.owner, m, amount=AT_STAKE)
        sync(a, b)
        sync(b, r)
        with pytest.raises(NotCaughtUp, match="another PC sells as branch SH01"):
            r.debit(r.owner, m, amount=10 * YUAN)
        a.debit(a.owner, m, amount=10 * YUAN)
        for x in (hq, b):  # (two PCs as one branch never sync with each other)
            sync(a, x)
            sync(r, x)
        for x in (a, r, hq, b):
            assert x.faults() == [], x.node
            assert _cash(x, m) == START - 10 * YUAN - AT_STAKE - 10 * YUAN, x.node
    finally:
        r.close()


def test_a_peer_showing_this_log_beyond_ours_is_said_in_status(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """Before any record of the other PC is here (a file written for this branch
    carries only the sender's view), status says another PC may run as the branch."""
    a, _b, hq, m = chain
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    r = _restore(tmp_path, bk, "new-pc")
    try:
        r.waive_catch_up()
        r.debit(r.owner, m, amount=AT_STAKE)
        sync(r, hq)
        export_file(hq, tmp_path / "hq-for.sync", for_node="SH01")
        import_file(a, tmp_path / "hq-for.sync")
        said = views.trust_status(a)["another_pc"] or ""
        assert "HQ holds this branch's log to record" in said, said
    finally:
        r.close()


def test_two_restores_whose_sales_cross_fork_and_every_branch_says_so(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """What is left: both restores shown the same file before either sold. Each sells
    420.00 at the same position of SH01's log. Every branch that sees both sides
    reports the fork with the money at stake and blocks SH01, and both PCs stop; each
    replica keeps the side it took first, never below zero."""
    a, b, hq, m = chain
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    a.debit(a.owner, m, amount=10 * YUAN)
    sync(a, hq)
    a.close()
    first = _restore(tmp_path, bk, "new-pc")
    second = _restore(tmp_path, bk, "dup-pc")
    try:
        path = _hq_file(tmp_path, hq, "hq-1")
        import_file(first, path)
        import_file(second, path)
        assert first.restored is None and second.restored is None
        first.debit(first.owner, m, amount=AT_STAKE)
        second.debit(second.owner, m, amount=AT_STAKE)
        sync(first, hq)
        sync(second, b)
        sync(hq, b)
        for x in (hq, b):
            forks = [f for f in x.faults() if f["kind"] == "fork"]
            assert [f["node"] for f in forks] == ["SH01"] and "at stake" in forks[0]["detail"]
            assert _cash(x, m) == START - 10 * YUAN - AT_STAKE
        sync(first, hq)
        sync(second, b)
        for pc in (first, second):
            with pytest.raises(NotCaughtUp, match="two different histories"):
                pc.debit(pc.owner, m, amount=10 * YUAN)
    finally:
        first.close()
        second.close()
