"""What proves that a node restored from a backup has caught up with itself, and which
restores are refused (tester's probes f2, f2b, f2c, f2d, f3).

A restored node sells again only once a branch shows it has heard of this node's log
past the backup's end, and the restored node holds all of that: its own old sync
files, a branch that last heard of it before the backup (by file or over a session)
prove nothing. A backup is never restored over a newer store of the same node, nor
into another branch's directory. Real SQLite stores, real sealed backups and files."""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import run_cli
from helpers import new_ledger, sync

from crdtledger import views
from crdtledger.backups import BACKUP_FILE, DB_FILE, restore, restore_pending, write_backup
from crdtledger.errors import InsufficientFunds, NotCaughtUp, StoreError
from crdtledger.ledger import Ledger
from crdtledger.syncfile import export_file, import_file
from crdtledger.writerules import epoch_of
from peer.chain import enrol, init_chain, revocations_rule, revoke

HUNDRED = 10_000  # 100.00


def _cash(ledger: Ledger, m: str) -> int:
    return int(views.balance(ledger.storage.conn, m)["cash"])


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Ledger, Ledger, Ledger, str]]:
    """SH01 with a member holding 100.00, SH02 and HQ, both in sync with it."""
    a, b, hq = (new_ledger(tmp_path, n) for n in ("SH01", "SH02", "HQ"))
    m = a.add_member(a.owner, name="张伟", phone="13812345678")
    a.topup(a.owner, m, HUNDRED)
    sync(a, b)
    sync(a, hq)
    yield a, b, hq, m
    for ledger in (a, b, hq):
        ledger.close()


def _restored(tmp_path: Path, bk: Path) -> Ledger:
    restore(bk, tmp_path / "sh01-restored")
    r = Ledger.open(tmp_path / "sh01-restored")
    assert r.restored
    return r


def _every_peer_takes(r: Ledger, peers: tuple[Ledger, ...], m: str, cash: int) -> None:
    """Each peer in turn syncs with the restored node and takes what it sells: the
    member's cash is `cash` there and nothing is held against any branch."""
    for peer in peers:
        sync(r, peer)
        assert _cash(peer, m) == cash and peer.faults() == []


def _spent_after_backup(tmp_path: Path, a: Ledger, hq: Ledger, m: str) -> Path:
    """A backup, then the member's whole 100.00 served at SH01, which only HQ hears of."""
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    a.debit(a.owner, m, amount=HUNDRED)
    sync(a, hq)
    return bk


def _head_office_unlocks(tmp_path: Path, hq: Ledger, r: Ledger, m: str) -> None:
    """Head office's file, made now, shows the 100.00 served after the backup: the
    restored node takes it, sells again, and refuses to serve it a second time."""
    export_file(hq, tmp_path / "hq-now.sync")
    import_file(r, tmp_path / "hq-now.sync")
    assert r.restored is None and _cash(r, m) == 0
    with pytest.raises(InsufficientFunds):
        r.debit(r.owner, m, amount=HUNDRED)


STALE = (r"restored from a backup of .*branch SH02 has heard nothing from this branch "
         r"since the backup.*and HQ not yet: connect to them, or to a branch that has heard "
         r"from this one since the backup")


def test_its_own_sync_files_never_unlock_a_restored_node(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    a, _b, hq, m = chain
    export_file(a, tmp_path / "own-old.sync")  # before the backup
    bk = _spent_after_backup(tmp_path, a, hq, m)
    export_file(a, tmp_path / "own-new.sync")  # after: carries the debit
    r = _restored(tmp_path, bk)
    try:
        got = import_file(r, tmp_path / "own-old.sync")
        assert r.restored and "own file" in got["not_selling"]
        with pytest.raises(NotCaughtUp, match="restored from a backup of"):
            r.debit(r.owner, m, amount=HUNDRED)  # the same 100.00 a second time
        # Its own later file brings its records back, but shows no branch holds no more.
        got = import_file(r, tmp_path / "own-new.sync")
        assert _cash(r, m) == 0 and r.positions()["SH01"] == a.positions()["SH01"]
        assert r.restored and "own file" in got["not_selling"]
        with pytest.raises(NotCaughtUp):
            r.topup(r.owner, m, 100)
        # A branch that heard from it after the backup does.
        export_file(hq, tmp_path / "hq.sync")
        got = import_file(r, tmp_path / "hq.sync")
        assert r.restored is None and got["not_selling"] is None
        with pytest.raises(InsufficientFunds):
            r.debit(r.owner, m, amount=HUNDRED)
    finally:
        r.close()


def test_files_made_before_the_restore_do_not_unlock_it(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """Every other branch's file says it heard nothing of SH01 since the backup, but
    each was made before the PC died: head office heard of the 100.00 served after
    the backup later. They unlocked the restored node, which served it again."""
    a, b, hq, m = chain
    export_file(b, tmp_path / "b-old.sync")
    export_file(hq, tmp_path / "hq-old.sync")
    bk = _spent_after_backup(tmp_path, a, hq, m)
    r = _restored(tmp_path, bk)
    try:
        for old in ("b-old.sync", "hq-old.sync"):
            got = import_file(r, tmp_path / old)
            assert r.restored and "made before this branch was restored" in got["not_selling"]
        with pytest.raises(NotCaughtUp, match="HQ's file was made before this branch was "
                                              "restored: it cannot show what HQ has heard"):
            r.debit(r.owner, m, amount=HUNDRED)
        _head_office_unlocks(tmp_path, hq, r, m)  # a file made now: it shows the sale
    finally:
        r.close()


def test_a_stale_branchs_file_does_not_unlock_it_and_the_till_says_why(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    a, b, hq, m = chain  # SH02 last heard of SH01 before the backup
    bk = _spent_after_backup(tmp_path, a, hq, m)
    r = _restored(tmp_path, bk)
    try:
        export_file(b, tmp_path / "b.sync")
        got = import_file(r, tmp_path / "b.sync")
        assert r.restored
        assert "SH02 has heard nothing from this branch since the backup" in got["not_selling"]
        with pytest.raises(NotCaughtUp, match=STALE):
            r.debit(r.owner, m, amount=HUNDRED)
        # The reason is kept with the store: a till in another process says it too.
        r.close()
        r = Ledger.open(tmp_path / "sh01-restored")
        with pytest.raises(NotCaughtUp, match=STALE):
            r.debit(r.owner, m, amount=HUNDRED)
        _head_office_unlocks(tmp_path, hq, r, m)
    finally:
        r.close()


def test_a_session_with_a_stale_branch_does_not_unlock_it(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    a, b, hq, m = chain
    bk = _spent_after_backup(tmp_path, a, hq, m)
    r = _restored(tmp_path, bk)
    try:
        sync(r, b)
        assert r.restored
        with pytest.raises(NotCaughtUp, match=STALE):
            r.debit(r.owner, m, amount=HUNDRED)
        sync(r, hq)  # HQ heard of the debit: it comes back, and the node may sell
        assert r.restored is None and _cash(r, m) == _cash(hq, m) == 0
        r.topup(r.owner, m, 500)  # at the next position of its log: everyone takes it
        _every_peer_takes(r, (hq, b), m, 500)
    finally:
        r.close()


def test_once_every_branch_known_has_heard_nothing_since_the_backup_it_sells(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """A branch that wrote nothing after its backup (or nothing that left the lost
    disk) gets no branch that knows more: once every branch it knows of (a writer whose
    log it holds, or one it synced with) has shown it at the backup's end or before,
    there is nothing to fetch back, and it sells without the owner's word."""
    a, b, hq, m = chain
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    r = _restored(tmp_path, bk)
    try:
        sync(r, b)
        with pytest.raises(NotCaughtUp, match=STALE):  # HQ may hold what came after
            r.debit(r.owner, m, amount=HUNDRED)
        sync(r, hq)
        assert r.restored is None
        r.debit(r.owner, m, amount=HUNDRED)
        _every_peer_takes(r, (b, hq), m, 0)
    finally:
        r.close()


def test_the_owner_ends_the_wait_from_the_command_line(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    a, _b, _hq, m = chain
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    r = _restored(tmp_path, bk)
    r.close()
    data = tmp_path / "sh01-restored"
    got = run_cli("restore", "--sell-now", "--from", bk, data=data)
    assert got.code == 1 and "restore first" in got.err, got
    got = run_cli("restore", "--sell-now", data=data)
    assert got.code == 0 and "sells again on the owner's word" in got.out, got.err
    with Ledger.open(data) as r:
        assert r.restored is None
        r.debit(r.owner, m, amount=HUNDRED)
    got = run_cli("restore", "--sell-now", data=data)
    assert got.code == 1 and "not waiting to catch up" in got.err, got


def test_a_branch_that_holds_more_than_came_keeps_it_locked(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    a, _b, hq, m = chain
    bk = _spent_after_backup(tmp_path, a, hq, m)
    r = _restored(tmp_path, bk)
    try:
        # HQ writes for what SH01 last held: nothing of SH01's log, but its view of it.
        export_file(hq, tmp_path / "hq-for.sync", for_node="SH01")
        got = import_file(r, tmp_path / "hq-for.sync")
        assert r.restored and got["incomplete"] == ["SH01"]
        assert "branch HQ holds this branch's log to record" in got["not_selling"]
        with pytest.raises(NotCaughtUp, match="take the rest from HQ"):
            r.debit(r.owner, m, amount=HUNDRED)
    finally:
        r.close()


def test_the_owner_may_waive_the_catch_up_and_gets_a_new_epoch(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    """A branch that wrote nothing after its backup never meets a branch that heard more
    of it: it stays locked until the owner takes the risk."""
    a, b, _hq, m = chain
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    a.close()
    r = _restored(tmp_path, bk)
    try:
        sync(r, b)
        assert r.restored
        old = r.storage.client_id
        r.waive_catch_up()
        assert r.restored is None and epoch_of(r.storage.client_id) == epoch_of(old) + 1
        r.debit(r.owner, m, amount=100)
        sync(r, b)
        assert _cash(b, m) == HUNDRED - 100 and b.faults() == []
    finally:
        r.close()


def test_nodes_never_restored_are_not_concerned(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str]) -> None:
    a, b, _hq, m = chain
    export_file(a, tmp_path / "own.sync")
    export_file(b, tmp_path / "b.sync")
    got = import_file(a, tmp_path / "own.sync")
    assert "not_selling" not in got
    import_file(a, tmp_path / "b.sync")
    a.debit(a.owner, m, amount=100)
    fresh = new_ledger(tmp_path, "SH05")  # a new store, with nothing yet
    try:
        assert fresh.restored is None
        sync(fresh, b)
        fresh.add_member(fresh.owner, name="李", phone="13900000000")
    finally:
        fresh.close()


# --- restores refused -------------------------------------------------------------


def _enrolled(root: Path, node: str) -> Path:
    chain = root / "acme"
    if not (chain / "ca.crt").exists():
        init_chain(chain)
    data = root / node.lower()
    Ledger.create(data, node, "acme")
    enrol(chain, data, node)
    return data


def _member_with(data: Path, amount: int) -> str:
    with Ledger.open(data) as ledger:
        m = ledger.add_member(ledger.owner, name="王芳", phone="13812345678")
        ledger.topup(ledger.owner, m, amount)
        return str(m)


def _cash_at(data: Path, m: str) -> int:
    with Ledger.open(data) as ledger:
        return _cash(ledger, m)


@pytest.mark.parametrize("how", ["command", "copied_by_hand"])
def test_an_old_backup_never_replaces_a_newer_store_of_the_node(
        tmp_path: Path, how: str) -> None:
    data = _enrolled(tmp_path, "SH01")
    m = _member_with(data, HUNDRED)
    write_backup(data, tmp_path / "bk")
    with Ledger.open(data) as ledger:
        ledger.topup(ledger.owner, m, 5_000)  # acknowledged after the backup
    before = sorted(p.name for p in data.iterdir())
    store = (data / DB_FILE).read_bytes()
    refused = r"holds node SH01's store, and it is newer than backup .*move ledger.sqlite3"
    if how == "command":
        with pytest.raises(StoreError, match=refused):
            restore(tmp_path / "bk", data)
    else:
        shutil.copy(tmp_path / "bk" / BACKUP_FILE, data)
        with pytest.raises(StoreError, match=refused + r".*or move .*ledger.backup out"):
            Ledger.open(data)
        assert (data / BACKUP_FILE).exists()  # left where it is, not taken
        (data / BACKUP_FILE).unlink()
    assert sorted(p.name for p in data.iterdir()) == before  # nothing put aside
    assert (data / DB_FILE).read_bytes() == store
    assert _cash_at(data, m) == HUNDRED + 5_000
    with Ledger.open(data) as ledger:
        assert ledger.restored is None


def test_a_backup_as_far_as_the_store_still_restores_in_place(tmp_path: Path) -> None:
    data = _enrolled(tmp_path, "SH01")
    m = _member_with(data, HUNDRED)
    write_backup(data, tmp_path / "bk")
    old = os.umask(0o022)  # what reading the stores' logs leaves behind stays private
    try:
        info = restore(tmp_path / "bk", data)
    finally:
        os.umask(old)
    assert [p.name for p in data.iterdir()
            if p.is_file() and stat.S_IMODE(p.stat().st_mode) != 0o600] == []
    assert info["kept"] and _cash_at(data, m) == HUNDRED
    with Ledger.open(data) as ledger:
        assert ledger.restored and ledger.storage.meta["restored_tip"] == str(
            ledger.positions()["SH01"])


@pytest.mark.parametrize("store", ["damaged", "gone"])
def test_a_backup_never_goes_into_another_branchs_directory(
        tmp_path: Path, store: str) -> None:
    a = _enrolled(tmp_path, "SH01")
    _member_with(a, HUNDRED)
    b = _enrolled(tmp_path, "SH02")
    write_backup(a, tmp_path / "bkA")
    if store == "damaged":
        (b / DB_FILE).write_bytes(b"garbage\n")
    else:
        (b / DB_FILE).unlink()
    cert = (b / "tls" / "node.crt").read_bytes()
    before = sorted(p.name for p in b.iterdir())
    refused = r"is node SH02's directory \(its certificate names it\).*of node SH01"
    with pytest.raises(StoreError, match=refused):
        restore(tmp_path / "bkA", b)
    assert sorted(p.name for p in b.iterdir()) == before
    # Copied by hand: the same, and the backup is left where it was put.
    shutil.copy(tmp_path / "bkA" / BACKUP_FILE, b)
    with pytest.raises(StoreError, match=refused):
        restore_pending(b)
    assert (b / BACKUP_FILE).exists()
    assert sorted(p.name for p in b.iterdir()) == sorted([*before, BACKUP_FILE])
    assert (b / "tls" / "node.crt").read_bytes() == cert
    if store == "damaged":
        assert (b / DB_FILE).read_bytes() == b"garbage\n"


# --- what the proof takes no word for (third wave of probes) -------------------------------


def test_a_file_dated_ahead_of_this_clock_does_not_unlock_it(
        tmp_path: Path, chain: tuple[Ledger, Ledger, Ledger, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Head office's PC ran 3 days ahead when it wrote a file, before it heard of the
    100.00 served after the backup: the file said "made after the restore", unlocked
    the restored node, and it served the 100.00 again (and was forked at head office).
    A file dated ahead of this PC's clock shows nothing of when it was made."""
    a, _b, hq, m = chain
    bk = tmp_path / "bk"
    write_backup(a.storage.dir, bk)
    ahead = hq.clock.wall() + 3 * 86_400_000
    with monkeypatch.context() as mp:
        mp.setattr(hq.clock, "wall", lambda: ahead)
        export_file(hq, tmp_path / "hq-ahead.sync")
    a.debit(a.owner, m, amount=HUNDRED)
    sync(a, hq)
    r = _restored(tmp_path, bk)
    try:
        got = import_file(r, tmp_path / "hq-ahead.sync")
        assert r.restored and "later than this PC's clock" in got["not_selling"]
        with pytest.raises(NotCaughtUp, match="one of the two clocks is wrong"):
            r.debit(r.owner, m, amount=HUNDRED)
        _head_office_unlocks(tmp_path, hq, r, m)
    finally:
        r.close()


class _Lost(NamedTuple):
    sh01: Path
    sh03: Path
    hq: Path
    m: str
    bk: Path


def _backed_up_then_sold_at_sh03(tmp_path: Path) -> _Lost:
    """SH01 backed up after head office heard it, then SH03 enrolled, and SH01's lost
    PC served 100.00 that only SH03 heard of."""
    sh01, hq = _enrolled(tmp_path, "SH01"), _enrolled(tmp_path, "HQ")
    m = _member_with(sh01, HUNDRED)
    with Ledger.open(sh01) as a, Ledger.open(hq) as h:
        sync(a, h)
    bk = tmp_path / "bk"
    write_backup(sh01, bk)
    sh03 = _enrolled(tmp_path, "SH03")
    with Ledger.open(sh01) as a, Ledger.open(sh03) as c:
        a.debit(a.owner, m, amount=HUNDRED)
        sync(a, c)
    return _Lost(sh01, sh03, hq, m, bk)


def _waits_for_sh03(tmp_path: Path, restored: Path, hq: Path, m: str) -> None:
    """Head office's word that it heard nothing since does not end the wait: SH03's is
    missing, and the 100.00 it heard of is not served again."""
    with Ledger.open(restored) as r, Ledger.open(hq) as h:
        export_file(h, tmp_path / "hq-now.sync")
        got = import_file(r, tmp_path / "hq-now.sync")
        assert r.restored and "and SH03 not yet" in got["not_selling"]
        with pytest.raises(NotCaughtUp):
            r.debit(r.owner, m, amount=HUNDRED)


def test_a_branch_enrolled_after_the_backup_is_waited_for(tmp_path: Path) -> None:
    """SH03 opened after SH01's backup, and the lost PC's sale after the backup went
    there alone. Restored on a new PC, SH01 knew of no SH03: head office's word that it
    had heard nothing since ended the wait, and the 100.00 was served again. A restore
    from the chain directory waits for every branch the chain enrolled, not revoked."""
    _sh01, sh03, hq, m, _bk = _backed_up_then_sold_at_sh03(tmp_path)
    restore(tmp_path / "bk", tmp_path / "new-pc", chain_dir=tmp_path / "acme")
    with Ledger.open(tmp_path / "new-pc") as r, Ledger.open(hq) as h, \
            Ledger.open(sh03) as c:
        export_file(h, tmp_path / "hq-now.sync")
        got = import_file(r, tmp_path / "hq-now.sync")
        assert r.restored and "and SH03 not yet" in got["not_selling"]
        with pytest.raises(NotCaughtUp):
            r.debit(r.owner, m, amount=HUNDRED)
        export_file(c, tmp_path / "sh03-now.sync")
        got = import_file(r, tmp_path / "sh03-now.sync")
        assert r.restored is None and _cash(r, m) == 0



def test_a_restore_into_the_backups_own_directory_keeps_waiting_for_every_branch(
        tmp_path: Path) -> None:
    """As above, restored with `restore --from BK --chain CHAIN --data BK`: the backup
    stayed in the data directory as one copied there by hand, and the store's first
    opening restored it again without the chain directory. The branches to wait for
    went with it, head office's file ended the wait, and the 100.00 was served again."""
    _sh01, _sh03, hq, m, bk = _backed_up_then_sold_at_sh03(tmp_path)
    done = run_cli("restore", "--from", bk, "--chain", tmp_path / "acme", "--data", bk)
    assert done.code == 0, done.err
    assert not (bk / BACKUP_FILE).exists()
    _waits_for_sh03(tmp_path, bk, hq, m)

def test_a_restore_cut_short_and_run_again_as_told_keeps_waiting_for_every_branch(
        tmp_path: Path) -> None:
    """As above, the restore onto the new PC killed after it wrote the node's keys and
    before the store. `status` said to run it again as `restore --from BACKUP --data
    DIR`, without the chain directory, which the keys now there no longer need: the
    branches to wait for were not noted, and head office's file ended the wait."""
    sh01, _sh03, hq, m, bk = _backed_up_then_sold_at_sh03(tmp_path)
    new_pc = tmp_path / "new-pc"
    new_pc.mkdir(mode=0o700)
    shutil.copytree(sh01 / "tls", new_pc / "tls")  # the keys written, not the store
    said = run_cli("status", "--data", new_pc).err
    told = re.search(r"run (crdtledger restore .*) again", said)
    assert told, said
    argv = [word.replace("BACKUP", str(bk)).replace("CHAIN_DIR", str(tmp_path / "acme"))
            for word in told.group(1).split()[2:]]
    done = run_cli("restore", *argv)
    assert done.code == 0, done.err
    _waits_for_sh03(tmp_path, new_pc, hq, m)

def test_a_restore_run_again_in_place_keeps_waiting_for_every_branch(
        tmp_path: Path) -> None:
    """As above, restored onto the new PC from the chain directory, then restored again
    over that waiting store without it (the node's keys now there open the backup): the
    branches the first restore noted to wait for went with the store it replaced."""
    _sh01, _sh03, hq, m, bk = _backed_up_then_sold_at_sh03(tmp_path)
    new_pc = tmp_path / "new-pc"
    first = run_cli("restore", "--from", bk, "--chain", tmp_path / "acme", "--data", new_pc)
    assert first.code == 0, first.err
    again = run_cli("restore", "--from", bk, "--data", new_pc)
    assert again.code == 0, again.err
    _waits_for_sh03(tmp_path, new_pc, hq, m)

def test_a_backup_of_a_waiting_store_does_not_carry_who_had_heard_nothing(
        tmp_path: Path) -> None:
    """SH01 restored on a second PC heard from SH02 that nothing had come since the
    backup, and that night's backup of the still waiting store was taken. SH03 then
    said the same, the PC sold the member's 100.00, SH02 took the sale, and the PC
    died. The night's backup restored on a third PC still held "SH02 has heard
    nothing": SH03's word alone ended the wait, and the 100.00 was served again."""
    sh01, sh02, sh03 = (_enrolled(tmp_path, n) for n in ("SH01", "SH02", "SH03"))
    m = _member_with(sh01, HUNDRED)
    with Ledger.open(sh01) as a, Ledger.open(sh02) as b, Ledger.open(sh03) as c:
        sync(a, b)
        sync(a, c)
    write_backup(sh01, tmp_path / "bk0")
    chain = tmp_path / "acme"
    restore(tmp_path / "bk0", tmp_path / "pc2", chain_dir=chain)
    with Ledger.open(tmp_path / "pc2") as r2, Ledger.open(sh02) as b:
        sync(r2, b)
        assert r2.restored  # SH03 not yet
    write_backup(tmp_path / "pc2", tmp_path / "bk1")  # the night's, still waiting
    with Ledger.open(tmp_path / "pc2") as r2, Ledger.open(sh02) as b, \
            Ledger.open(sh03) as c:
        sync(r2, c)
        assert r2.restored is None
        r2.debit(r2.owner, m, amount=HUNDRED)
        sync(r2, b)
    restore(tmp_path / "bk1", tmp_path / "pc3", chain_dir=chain)
    with Ledger.open(tmp_path / "pc3") as r3, Ledger.open(sh02) as b, \
            Ledger.open(sh03) as c:
        sync(r3, c)
        assert r3.restored
        with pytest.raises(NotCaughtUp):
            r3.debit(r3.owner, m, amount=HUNDRED)
        sync(r3, b)  # SH02 holds the sale, written by the second PC: it comes back
        assert _cash(r3, m) == 0
        with pytest.raises(NotCaughtUp, match="another PC restored as branch SH01"):
            r3.debit(r3.owner, m, amount=1)

def test_a_branch_enrolled_after_the_backup_and_revoked_is_not_waited_for(
        tmp_path: Path) -> None:
    """A shop enrolled after the backup that never opened and was revoked: the restored
    node has no head of it to judge, and waited for it for ever (its own files are
    refused as revoked). Each certificate the chain issued it is judged against the
    revocation list in force."""
    sh01, hq = _enrolled(tmp_path, "SH01"), _enrolled(tmp_path, "HQ")
    m = _member_with(sh01, HUNDRED)
    with Ledger.open(sh01) as a, Ledger.open(hq) as h:
        sync(a, h)
    write_backup(sh01, tmp_path / "bk")
    _enrolled(tmp_path, "SH05")
    with Ledger.open(hq) as h:
        h.set_rule(h.owner, "revocations", revocations_rule(revoke(tmp_path / "acme", "SH05")))
    restore(tmp_path / "bk", tmp_path / "new-pc", chain_dir=tmp_path / "acme")
    with Ledger.open(tmp_path / "new-pc") as r, Ledger.open(hq) as h:
        export_file(h, tmp_path / "hq-now.sync")
        got = import_file(r, tmp_path / "hq-now.sync")
        assert r.restored is None, got["not_selling"]
        r.debit(r.owner, m, amount=100)
