"""A store file put back by hand (yesterday's copy of ledger.sqlite3 copied over the
store, not `crdtledger restore`) is a restored store: it catches up with its own log
from a peer before it sells, instead of selling again, at positions its peers hold,
money it had already served (crdtledger/tipmark.py). Real SQLite files copied as a
shop's PC user would, real sealed sync files through the command line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Cli, run_cli
from helpers import new_ledger, sync

from crdtledger import views, walpair
from crdtledger.errors import NotCaughtUp, NotFound
from crdtledger.ledger import Ledger
from crdtledger.storage import DB_FILE
from crdtledger.syncfile import export_file
from crdtledger.tipmark import TIP_FILE
from crdtledger.trust import UntrustedSigner
from peer.chain import enrol, init_chain


def put_back(copy: Path, data: Path) -> None:
    """The old file copied over the store, as by hand (its WAL and index gone too)."""
    for suffix in ("-wal", "-shm"):
        (data / f"{DB_FILE}{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, data / DB_FILE)


def _cash(ledger: Ledger, member: str) -> int:
    return int(views.balance(ledger.storage.conn, member)["cash"])


def _copied(tmp_path: Path) -> tuple[Path, Ledger, str]:
    """1,000.00 paid in at SH01 and synced to SH02, then SH01's store file copied to
    tmp_path/copy.sqlite3 (SH01 closed): its data directory, SH02, the member."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    m = a.add_member(a.owner, name="Li", phone="13800000000")
    a.topup(a.owner, m, 100_000)
    sync(a, b)
    data = a.storage.dir
    a.close()
    shutil.copy(data / DB_FILE, tmp_path / "copy.sqlite3")
    return data, b, m


def test_a_copy_put_back_sells_nothing_twice(tmp_path: Path) -> None:
    data, b, m = _copied(tmp_path)
    a = Ledger.open(data)
    a.debit(a.owner, m, amount=60_000)  # 600.00 served; SH02 hears of it
    sync(a, b)
    a.close()

    put_back(tmp_path / "copy.sqlite3", data)
    a = Ledger.open(data)
    try:
        # The copy says 1,000.00 are here; it does not serve them again.
        assert a.restored
        before = a.positions()
        with pytest.raises(NotCaughtUp, match=r"restored from a backup of .* connect to"):
            a.debit(a.owner, m, amount=60_000)
        assert a.positions() == before
        assert views.trust_status(a)["restored"]
        # Online: it takes back the 600.00 served, and then sells on what is left.
        sync(a, b)
        assert a.restored is None
        assert _cash(a, m) == _cash(b, m) == 40_000
        a.debit(a.owner, m, amount=10_000)
        sync(a, b)
        assert _cash(a, m) == _cash(b, m) == 30_000
        assert a.faults() == [] and b.faults() == [], "no fork anywhere"
    finally:
        a.close()
        b.close()


def test_a_stale_branch_does_not_unlock_it_the_one_that_took_the_sale_does(
        tmp_path: Path) -> None:
    """The mark says how far the log left the PC: SH02, which last heard of SH01 at
    the copy, cannot unlock it (before, "every branch known heard nothing since" did,
    and it sold the 600.00 again); SH03, a branch the copy never heard of but which
    took the sale, does."""
    data, b, m = _copied(tmp_path)
    a, c = Ledger.open(data), new_ledger(tmp_path, "SH03")
    a.debit(a.owner, m, amount=60_000)
    sync(a, c)
    a.close()
    put_back(tmp_path / "copy.sqlite3", data)
    a = Ledger.open(data)
    try:
        sync(a, b)
        with pytest.raises(NotCaughtUp, match="left this PC as far as record 3, and branch "
                                              "SH02 holds it only to record 2"):
            a.debit(a.owner, m, amount=60_000)
        sync(a, c)
        assert a.restored is None
        assert _cash(a, m) == _cash(c, m) == 40_000
        a.debit(a.owner, m, amount=10_000)
        sync(a, c)
        sync(a, b)
        assert a.faults() == b.faults() == c.faults() == []
    finally:
        for x in (a, b, c):
            x.close()


def test_what_reached_no_branch_waits_for_the_owners_word(tmp_path: Path) -> None:
    """A sale whose head left in a sync file nobody imported yet: no branch can show
    it, so the copy stays locked until the owner takes the risk (`restore --sell-now`);
    a restart after that is not taken for another copy put back (the mark follows the
    log down). A sale that never left at all cannot clash with anything: such a copy
    is not even locked."""
    data, b, m = _copied(tmp_path)
    a = Ledger.open(data)
    a.debit(a.owner, m, amount=20_000)
    export_file(a, tmp_path / "lost.sync")  # written, not imported anywhere yet
    a.close()
    put_back(tmp_path / "copy.sqlite3", data)
    a = Ledger.open(data)
    try:
        sync(a, b)  # SH02 holds SH01's log only as far as the copy
        assert a.restored
        a.waive_catch_up()
    finally:
        a.close()
    a = Ledger.open(data)
    try:
        assert a.restored is None
        a.debit(a.owner, m, amount=10_000)
        sync(a, b)
        assert _cash(a, m) == _cash(b, m) == 90_000
        assert a.faults() == [] and b.faults() == []
    finally:
        a.close()
    shutil.copy(data / DB_FILE, tmp_path / "copy2.sqlite3")
    with Ledger.open(data) as a:
        a.debit(a.owner, m, amount=10_000)  # never leaves
    put_back(tmp_path / "copy2.sqlite3", data)
    with Ledger.open(data) as again:
        assert again.restored is None
    b.close()


def test_a_reader_a_damaged_mark_and_a_new_store_are_not_a_copy_put_back(tmp_path: Path) -> None:
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    m = a.add_member(a.owner, name="Li", phone="13800000000")
    a.topup(a.owner, m, 5_000)
    data = a.storage.dir
    assert not (data / TIP_FILE).exists(), "nothing has left yet"
    sync(a, b)
    mark = (data / TIP_FILE).read_text()
    assert mark.split()[2] == "SH01" and int(mark.split()[0]) == a.positions()["SH01"]
    # A reader (the running node holds the lock) finds nothing wrong either; a
    # restart neither (test_restore.py: test_a_normal_restart_is_not_a_restore, whose
    # store has a mark since it synced).
    with Ledger.open(data, lock=False) as reader:
        assert reader.restored is None
    a.close()
    b.close()
    # A damaged mark proves nothing; a new store in a directory with an old mark
    # ignores it (the mark is the old store's).
    (data / TIP_FILE).write_text("garbage")
    with Ledger.open(data) as again:
        assert again.restored is None
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / TIP_FILE).write_text(mark)
    Ledger.create(fresh, "SH01", "default", "Asia/Shanghai")
    with Ledger.open(fresh) as new:
        assert new.restored is None
        new.add_member(new.owner, name="Wang", phone="13900000000")
    # A longer mark left by another node's store is overwritten whole, not in part.
    (data / TIP_FILE).write_text("0" * 20 + " " + "ab" * 32 + " HQ_OFFICE_TILL2\n")
    with Ledger.open(data) as again:
        export_file(again, tmp_path / "out.sync")
    assert (data / TIP_FILE).read_text() == mark


def test_put_back_at_the_command_line(cli: Cli, make_node: Callable[..., Path],
                                      tmp_path: Path) -> None:
    """As a shop's PC user would: copy the store file, sell, copy it back; the till
    refuses with the reason and what to do, `status` says so, and a sync file from
    the other branch unlocks it."""
    sh01, sh02 = make_node("SH01"), make_node("SH02")

    def out(*args: object, data: Path) -> dict:
        r = cli(*args, "--json", data=data)
        assert r.code == 0, r.err
        return json.loads(r.out)

    def files(frm: Path, to: Path, name: str) -> None:
        assert cli("export", "--out", tmp_path / name, data=frm).code == 0
        r = cli("import", tmp_path / name, data=to)
        assert r.code == 0, r.err

    m = out("member", "add", "--name", "李", "--phone", "13800000000", data=sh01)["member_id"]
    out("topup", "--member", m, "--amount", "100.00", data=sh01)
    files(sh01, sh02, "a.sync")
    shutil.copy(sh01 / DB_FILE, tmp_path / "usb-copy.sqlite3")
    out("debit", "--member", m, "--amount", "60.00", data=sh01)
    files(sh01, sh02, "b.sync")

    put_back(tmp_path / "usb-copy.sqlite3", sh01)
    assert "RESTORED" in cli("status", data=sh01).out  # a reader says so too
    r = cli("debit", "--member", m, "--amount", "60.00", data=sh01)
    assert r.code != 0 and "restored from a backup of" in r.err, r
    assert "RESTORED" in cli("status", data=sh01).out
    files(sh02, sh01, "c.sync")
    assert out("balance", "--member", m, data=sh01)["cash"] == 4000
    out("debit", "--member", m, "--amount", "10.00", data=sh01)
    files(sh01, sh02, "d.sync")
    assert out("balance", "--member", m, data=sh02)["cash"] == 3000


def test_a_mark_that_cannot_be_written_does_not_stop_the_sync(tmp_path: Path) -> None:
    """The mark is a tripwire: where it cannot be written (here a directory squats its
    name) the node syncs all the same, and writes it once it can."""
    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    try:
        (a.storage.dir / TIP_FILE).mkdir()
        m = a.add_member(a.owner, name="Li", phone="13800000000")
        a.topup(a.owner, m, 5_000)
        sync(a, b)
        assert _cash(b, m) == 5_000
        (a.storage.dir / TIP_FILE).rmdir()
        a.debit(a.owner, m, amount=1_000)
        sync(a, b)
        assert int((a.storage.dir / TIP_FILE).read_text().split()[0]) == a.positions()["SH01"]
    finally:
        a.close()
        b.close()


def test_another_branchs_store_copied_into_a_directory_is_refused(tmp_path: Path) -> None:
    """HQ's ledger.sqlite3 copied over SH02's (or a store of another chain's SH02): it
    was opened and sold from under SH02's keys, and no branch took what it wrote."""
    chain_dir = tmp_path / "chain"
    init_chain(chain_dir, "acme")
    for node in ("HQ", "SH02"):
        Ledger.create(tmp_path / node, node, "acme")
        enrol(chain_dir, tmp_path / node, node, head_office=node == "HQ")
    Ledger.create(tmp_path / "other", "SH02", "beta")
    for stranger, said in (("HQ", "node HQ of chain 'acme'"), ("other", "node SH02 of chain "
                                                                "'beta'")):
        data = tmp_path / f"sh02-{stranger}"
        shutil.copytree(tmp_path / "SH02", data)
        shutil.copy(tmp_path / stranger / DB_FILE, data / DB_FILE)
        before = (data / DB_FILE).read_bytes()
        with pytest.raises(UntrustedSigner, match=f"store in .* is {said}, but this directory's "
                                                  "certificate is node SH02 of chain 'acme'"):
            Ledger.open(data)
        assert (data / DB_FILE).read_bytes() == before
    Ledger.open(tmp_path / "SH02").close()  # its own opens


def _crash_image(data: Path, to: Path) -> Path:
    """The data directory as a crash (a power cut, SIGKILL) leaves it: the store file
    and its write-ahead log as they are, nothing checkpointed."""
    to.mkdir()
    for path in data.iterdir():
        if path.is_file() and path.name != "lock":
            shutil.copy(path, to / path.name)
    return to


def _crashed_and_put_back(a: Ledger, copy: Path, crash: Path) -> None:
    """`a`'s PC loses power (its directory as the crash leaves it, log and all), and
    the old `copy` of its store file is put back over the store by hand."""
    data = a.storage.dir
    _crash_image(data, crash)
    a.close()
    for path in data.glob(f"{DB_FILE}*"):
        path.unlink()
    for path in crash.iterdir():
        shutil.copy(path, data / path.name)
    shutil.copy(copy, data / DB_FILE)


def test_an_old_copy_put_back_beside_a_crashs_log_opens_as_the_copy(tmp_path: Path) -> None:
    """The PC crashed (its log, ledger.sqlite3-wal, left beside the store), and
    yesterday's copy of ledger.sqlite3 was put back over the store by hand: SQLite laid
    the newer log's pages over the older file, whose tables then disagreed with their
    indexes for good (`integrity_check`), and the tip mark matched, the log's records
    being in those pages. The log is set aside, kept, and the copy opens as it is: a
    restored store, which sells nothing twice."""
    data, b, m = _copied(tmp_path)
    a = Ledger.open(data)
    a.debit(a.owner, m, amount=60_000)  # 600.00 served; SH02 hears of it
    sync(a, b)
    for round_ in range(3):  # enough to start the log again, more than once
        for i in range(150):
            a.add_member(a.owner, name=f"N{round_}{i}", phone=f"139{round_:02d}{i:06d}")
        a.storage.forget_freed()  # a checkpoint
    a.debit(a.owner, m, amount=100)
    _crashed_and_put_back(a, tmp_path / "copy.sqlite3", tmp_path / "crash")

    a = Ledger.open(data)
    try:
        assert a.storage.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert list(data.glob(f"{DB_FILE}-wal.foreign-*")), "the log is kept aside"
        assert _cash(a, m) == 100_000  # the copy, as it was
        assert a.restored
        with pytest.raises(NotCaughtUp):
            a.debit(a.owner, m, amount=60_000)
        sync(a, b)
        # The 1.00 sold after the last sync went with the log set aside, as with any
        # restore; what left the PC (the 600.00) comes back.
        assert _cash(a, m) == _cash(b, m) == 40_000
        assert a.faults() == [] and b.faults() == []
    finally:
        a.close()
        b.close()


def test_a_copy_of_the_generation_before_put_back_beside_a_crashs_log_opens_as_the_copy(
        tmp_path: Path) -> None:
    """A copy taken after a checkpoint that a reader (the counter's page, `status`) cut
    short holds the stamp of its log's generation; the log started again once since.
    Put back beside the crash's log, its stamp was one before the log's, which the
    store's own file holds until the new log's first checkpoint: SQLite laid the log
    over it, the store was malformed (every write refused, `status` silent, backups
    copying it on). The file beside also names how far the file had gone when the log
    started again; the copy had not gone as far."""
    import sqlite3

    a, b = new_ledger(tmp_path, "SH01"), new_ledger(tmp_path, "SH02")
    m = a.add_member(a.owner, name="Li", phone="13800000000")
    a.topup(a.owner, m, 100_000)
    sync(a, b)
    data = a.storage.dir
    for i in range(50):
        a.add_member(a.owner, name=f"A{i}", phone=f"1370000{i:04d}")
    reader = sqlite3.connect(data / DB_FILE)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM meta").fetchone()  # its snapshot held
        a.storage.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the log stays
        shutil.copy(data / DB_FILE, tmp_path / "copy.sqlite3")
        a.debit(a.owner, m, amount=60_000)  # 600.00 served; SH02 hears of it
        sync(a, b)
    finally:
        reader.close()
    def stamp() -> int:
        return int(a.storage.conn.execute(
            "SELECT value FROM meta WHERE key = 'wal_stamp'").fetchone()[0])

    copied = stamp()
    for i in range(50):  # the log copied into the file and started again, once
        a.add_member(a.owner, name=f"B{i}", phone=f"1360000{i:04d}")
    a.debit(a.owner, m, amount=100)
    assert stamp() == copied + 1
    _crashed_and_put_back(a, tmp_path / "copy.sqlite3", tmp_path / "crash")
    with Ledger.open(data) as c:
        assert c.storage.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert list(data.glob(f"{DB_FILE}-wal.foreign-*")), "the log is kept aside"
        assert c.restored and _cash(c, m) == 100_000  # the copy, as it was
        with pytest.raises(NotCaughtUp):
            c.debit(c.owner, m, amount=100)
        sync(c, b)  # what left the PC comes back (the 1.00 never did)
        assert _cash(c, m) == _cash(b, m) == 40_000
        assert c.faults() == [] and b.faults() == []
    b.close()


def test_a_crashs_own_log_is_never_set_aside(tmp_path: Path) -> None:
    """The other side: a store and the log a crash left with it, at any moment (after
    a checkpoint, with the log started again or not, stamped or not), open whole."""
    a = new_ledger(tmp_path, "SH01")
    m = a.add_member(a.owner, name="Li", phone="13800000000")
    a.topup(a.owner, m, 100_000)
    data = a.storage.dir
    images: list[tuple[Path, int]] = []
    for step in range(40):
        for _ in range(25):
            a.debit(a.owner, m, amount=1)
        if step % 7 == 3:
            a.storage.forget_freed()
        images.append((_crash_image(data, tmp_path / f"crash{step}"), _cash(a, m)))
    a.close()
    for image, cash in images:
        with Ledger.open(image) as ledger:
            assert not list(image.glob(f"{DB_FILE}-wal.foreign-*")), image
            assert _cash(ledger, m) == cash
            assert ledger.restored is None


@pytest.mark.parametrize("lost", ["old content", "empty", "missing"])
def test_a_crash_that_lost_the_file_beside_keeps_its_log_at_the_next_crash(
        tmp_path: Path, lost: str) -> None:
    """A crash right after the log started again lost the write of ledger.walstamp (not
    yet on the disk; a disk full that emptied it; the store's first log). The log was
    rightly kept, but the next run stamped the same log again, two ahead of the store
    file: a second crash before a checkpoint set the store's own log aside, and a
    member answered in it was gone. A log that holds its stamp is not stamped again."""
    a = new_ledger(tmp_path, "SH01")
    a.add_member(a.owner, name="Li", phone="13800000000")
    data = a.storage.dir
    stamp_file = data / walpair.STAMP_FILE
    before = stamp_file.read_bytes() if stamp_file.exists() else b""
    a.storage.forget_freed()  # a checkpoint: the next commit starts the log again
    a.add_member(a.owner, name="Wang", phone="13800000001")  # stamped in the new log
    first = _crash_image(data, tmp_path / "crash1")
    a.close()
    if lost == "missing":
        (first / walpair.STAMP_FILE).unlink()
    else:
        (first / walpair.STAMP_FILE).write_bytes(before if lost == "old content" else b"")
    with Ledger.open(first) as b:
        answered = b.add_member(b.owner, name="Zhao", phone="13800000002")
        second = _crash_image(first, tmp_path / "crash2")
    with Ledger.open(second) as c:
        assert not list(second.glob(f"{DB_FILE}-wal.foreign-*"))
        assert c.member(answered)["name"] == "Zhao"


def test_the_file_beside_is_written_over_in_place(tmp_path: Path) -> None:
    """The stamp is written over the line before, every line as long (truncated first,
    ext4 wrote the file out at its close: 1.8-8 ms once a log, on a sale's commit); an
    older build's line, written whole and shorter, leaves no tail behind, and a crash
    image of the store keeps its log as before."""
    a = new_ledger(tmp_path, "SH01")
    a.add_member(a.owner, name="Li", phone="13800000000")
    stamp_file = a.storage.dir / walpair.STAMP_FILE
    node = stamp_file.stat().st_ino
    stamp, salts, last = stamp_file.read_text().split()
    stamp_file.write_text(f"{stamp} {salts} {last}\n")  # as a build before this one wrote it
    for name, phone in (("Wang", "13800000001"), ("Zhao", "13800000002")):
        a.storage.forget_freed()  # a checkpoint: the next commit starts the log again
        a.add_member(a.owner, name=name, phone=phone)
        text = stamp_file.read_text()
        assert len(text) == walpair._STAMP_WIDTH and text.endswith("\n"), repr(text)
        assert int(text.split()[0]) > int(stamp) and len(text.split()) == 3
        assert stamp_file.stat().st_ino == node and stamp_file.stat().st_mode & 0o777 == 0o600
        stamp = text.split()[0]
    crash = _crash_image(a.storage.dir, tmp_path / "crash")
    a.close()
    with Ledger.open(crash) as ledger:
        assert not list(crash.glob(f"{DB_FILE}-wal.foreign-*"))
        assert [m["name"] for m in ledger.find_members("Zhao")] == ["Zhao"]


def test_a_log_started_again_by_its_own_stamp_is_still_the_stores(tmp_path: Path) -> None:
    """A commit copied into the file whole as the first of a new log (a catch-up's
    slice, a sync file's import) had the stamp's own commit start the log again; the
    file beside then named the log before it, the next stamp ran ahead of the store,
    and a crash set the store's own log aside: an answered member gone."""
    a = new_ledger(tmp_path, "SH01")
    a.add_member(a.owner, name="Li", phone="13800000000")
    a.storage.forget_freed()  # a checkpoint: the next commit starts a new log
    wide = {f"k{i}": "x" * 150 for i in range(20)}
    with a.storage.transaction():  # over SQLite's 1,000 pages: copied into the file whole
        for i in range(700):
            a.add_member(a.owner, name=f"N{i}", phone=f"139{i:08d}", custom=wide)
    late = a.add_member(a.owner, name="Wang", phone="13700000000")
    crash = _crash_image(a.storage.dir, tmp_path / "crash")
    a.close()
    with Ledger.open(crash) as ledger:
        assert not list(crash.glob(f"{DB_FILE}-wal.foreign-*"))
        assert ledger.member(late)["name"] == "Wang"


def test_a_store_file_torn_by_a_crash_mid_checkpoint_keeps_its_log(tmp_path: Path) -> None:
    """Killed while a checkpoint copied the log into the file, the file alone does not
    read (its pages half old, half new); with its log laid over it, it is whole. Read
    alone as another file, the store's own log was set aside and the store left could
    not open. A file that does not read alone tells nothing: the log stays."""
    a = new_ledger(tmp_path, "SH01")
    m = a.add_member(a.owner, name="Li", phone="13800000000")
    for i in range(200):  # the file grows: the log holds its first page again
        a.add_member(a.owner, name=f"N{i}", phone=f"139{i:08d}")
    a.storage.forget_freed()
    for i in range(200, 400):
        a.add_member(a.owner, name=f"N{i}", phone=f"139{i:08d}")
    crash = _crash_image(a.storage.dir, tmp_path / "crash")
    a.close()
    page = int.from_bytes((crash / DB_FILE).read_bytes()[16:18], "big")
    in_log = _pages_in_log(crash / f"{DB_FILE}-wal", page)
    assert 1 in in_log  # the first page is in the log: tearing it in the file is safe
    with open(crash / DB_FILE, "r+b") as f:  # as a checkpoint cut short leaves it
        f.seek(100)
        f.write(b"\xff" * (page - 100))
    with Ledger.open(crash) as ledger:
        assert not list(crash.glob(f"{DB_FILE}-wal.foreign-*"))
        assert ledger.storage.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert ledger.member(m)["name"] == "Li"


def _pages_in_log(wal: Path, page: int) -> set[int]:
    """The page numbers a write-ahead log holds frames of (sqlite.org/fileformat2)."""
    data = wal.read_bytes()
    out, at = set(), 32
    while at + 24 + page <= len(data):
        out.add(int.from_bytes(data[at:at + 4], "big"))
        at += 24 + page
    return out


def _old_copy_beside_a_newer_log(tmp_path: Path) -> tuple[Path, str]:
    """Yesterday's copy of a store put back beside the log a crash left (the log
    started again since the copy): the data directory and a member only the log holds."""
    a = new_ledger(tmp_path, "SH01")
    a.add_member(a.owner, name="Li", phone="13800000000")
    data = a.storage.dir
    a.close()
    shutil.copy(data / DB_FILE, tmp_path / "copy.sqlite3")
    a = Ledger.open(data)
    for round_ in range(3):
        for i in range(100):
            a.add_member(a.owner, name=f"N{round_}{i}", phone=f"139{round_:02d}{i:06d}")
        a.storage.forget_freed()
    late = a.add_member(a.owner, name="Wang", phone="13700000000")
    crash = _crash_image(data, tmp_path / "crash")
    a.close()
    shutil.copy(tmp_path / "copy.sqlite3", crash / DB_FILE)
    return crash, late


def test_a_reader_with_no_node_running_does_not_mix_a_put_back_store(tmp_path: Path) -> None:
    """`crdtledger status` with the node stopped opened the put-back store beside the
    other file's log, and its close copied that log into the file: the node could then
    not open, and no log was left to set aside. A reader with no node running takes
    the node's look first."""
    crash, late = _old_copy_beside_a_newer_log(tmp_path)
    with Ledger.open(crash, lock=False) as reader:
        assert reader.storage.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert list(crash.glob(f"{DB_FILE}-wal.foreign-*"))
    with Ledger.open(crash) as node:
        assert node.storage.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with pytest.raises(NotFound):
            node.member(late)  # the copy, as it was


def test_a_new_store_takes_no_log_left_in_its_directory(tmp_path: Path) -> None:
    """A crashed store moved out by hand without its -wal, -shm and ledger.walstamp,
    and `init` run there again: the old log was laid over the new file, which opened as
    the old node with its members. A new store sets such leftovers aside."""
    a = new_ledger(tmp_path, "SH01")
    for i in range(50):
        a.add_member(a.owner, name=f"N{i}", phone=f"139{i:08d}")
    crash = _crash_image(a.storage.dir, tmp_path / "crash")
    a.close()
    (crash / DB_FILE).unlink()  # moved out by hand; its log, index and stamp left
    (crash / walpair.STAMP_FILE).unlink(missing_ok=True)  # (a stamp would not tell here)
    Ledger.create(crash, "SH09", "default")
    with Ledger.open(crash) as fresh:
        assert fresh.node == "SH09"
        assert fresh.storage.conn.execute("SELECT COUNT(*) FROM members").fetchone() == (0,)
    assert list(crash.glob(f"{DB_FILE}-wal.foreign-*"))


def test_two_logs_set_aside_in_one_second_are_both_kept(tmp_path: Path) -> None:
    """Names of the second only: a second log set aside replaced the first (a reader
    and a node starting together each set one aside), and the first was lost."""
    db = tmp_path / DB_FILE
    for content in (b"first", b"second"):
        (tmp_path / f"{DB_FILE}-wal").write_bytes(content)
        walpair.forget(tmp_path, db)
    kept = sorted(p.read_bytes() for p in tmp_path.glob(f"{DB_FILE}-wal.foreign-*"))
    assert kept == [b"first", b"second"]


def test_a_reader_holds_the_lock_from_its_look_to_its_open(tmp_path: Path) -> None:
    """A reader that looked with no node running, and set a log aside after a node had
    started and opened a new one, moved the node's live log: answered writes were lost
    at the next crash. The reader holds the directory's lock while it looks."""
    from crdtledger import storage as storage_module

    crash, _late = _old_copy_beside_a_newer_log(tmp_path)
    held: list[bool] = []
    real = walpair.set_aside_foreign

    def looking(data_dir: Path, db: Path) -> Path | None:
        held.append(storage_module._lock_if_free(data_dir / storage_module.LOCK_FILE)
                    is None)  # a node would wait here
        return real(data_dir, db)

    walpair.set_aside_foreign = looking  # type: ignore[assignment]
    try:
        with Ledger.open(crash, lock=False):
            pass
    finally:
        walpair.set_aside_foreign = real  # type: ignore[assignment]
    assert held == [True]


def test_sales_of_money_raised_by_hand_are_said_where_they_wait(tmp_path: Path) -> None:
    """SH01's store edited by hand (sqlite3: 1,000.00 added to a member's cash rights),
    then 500.00 sold against it: SH02 held the sale, waiting for rights SH01 never
    had, and no status, page or log said a word. Past ten minutes its status says
    whose entries wait, how many and since when (`unfunded`)."""
    from helpers import FakeClock

    clock = FakeClock()
    a, b = new_ledger(tmp_path, "SH01", now_ms=clock), new_ledger(tmp_path, "SH02", now_ms=clock)
    try:
        m = a.add_member(a.owner, name="王芳", phone="13800000001")
        a.topup(a.owner, m, 100_000)
        sync(a, b)
        with a.storage.transaction():
            a.storage.conn.execute("UPDATE rights SET amount = amount + 100000 "
                                   "WHERE member = ? AND purse = 'cash'", (m,))
        sale = a.debit(a.owner, m, amount=150_000)
        sync(a, b)
        assert _cash(b, m) == 100_000
        assert views.unfunded(b) == {}  # a moment in a catch-up is not said
        clock.ms += views.UNFUNDED_SAID_MS + 1
        assert views.unfunded(b) == {"SH01": {"entries": 1, "since": sale["at"]}}
        assert views.trust_status(b)["unfunded"] == views.unfunded(b)
        assert views.unfunded(a) == {}
    finally:
        a.close()
        b.close()
    r = run_cli("status", data=tmp_path / "sh02")
    assert r.code == 0 and "UNFUNDED: 1 entry of SH01 waits here for rights it never held" \
        in r.out, r.out
