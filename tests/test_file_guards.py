"""Guards on the files a branch makes and takes (17th round, the file adversaries):
a chain secret anyone could guess, a symbolic link planted while an export writes,
and refused file commands kept with the refusals. The real command line, real
stores and real sync files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli

from crdtledger.ledger import Ledger


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chain(cli: Cli, tmp_path: Path, name: str = "acme") -> Path:
    chain = tmp_path / f"chain-{name}"
    assert cli("chain", "init", "--out", chain, "--name", name).code == 0
    return chain


def _node(cli: Cli, tmp_path: Path, chain: Path, node: str = "SH01", *,
          head_office: bool = False) -> Path:
    data = tmp_path / f"{chain.name}-{node}"
    r = cli("init", "--node", node, "--chain", chain,
            *(("--head-office",) if head_office else ()), data=data)
    assert r.code == 0, r.err
    return data


# -- 1. a chain secret with no secrecy ----------------------------------------------

WEAK = (bytes(32), b"\xff" * 32, b"0123" * 8)


def test_init_refuses_a_chain_secret_anyone_could_guess(cli: Cli, tmp_path: Path) -> None:
    """A `chain.key` of all zeros (32 bytes: the length check passed) was copied into
    the new branch at `init`, exit 0; the branch then sealed files every other branch
    refused, and anyone could read. Refused at init with a sentence naming the file,
    and nothing made."""
    chain = _chain(cli, tmp_path)
    good = (chain / "chain.key").read_bytes()
    for n, weak in enumerate(WEAK):
        (chain / "chain.key").write_bytes(weak)
        data = tmp_path / f"sh{n}"
        r = cli("init", "--node", f"SH0{n + 1}", "--chain", chain, data=data)
        assert r.code == 1 and "Traceback" not in r.err, r
        assert str(chain / "chain.key") in r.err and "not a chain secret" in r.err, r
        assert not data.exists(), sorted(data.iterdir())
        assert not list((chain / "issued").glob("*")) if (chain / "issued").exists() else True
    (chain / "chain.key").write_bytes(good)
    assert cli("init", "--node", "SH01", "--chain", chain, data=tmp_path / "ok").code == 0


def test_a_node_refuses_a_guessable_chain_secret_in_its_directory(
        cli: Cli, tmp_path: Path) -> None:
    """`DATA/tls/chain.key` overwritten with 32 zero bytes was taken by every command
    and by `node run`: exports sealed under it exit 0. Refused as a damaged key is."""
    chain = _chain(cli, tmp_path)
    data = _node(cli, tmp_path, chain)
    good = (data / "tls" / "chain.key").read_bytes()
    store = _digest(data / "ledger.sqlite3")
    for weak in WEAK:
        (data / "tls" / "chain.key").write_bytes(weak)
        for args in (("export", "--out", tmp_path / "x.sync"),
                     ("backup", "--out", tmp_path / "bk")):
            r = cli(*args, data=data)
            assert r.code == 1 and "Traceback" not in r.err, r
            assert "chain.key is damaged" in r.err and "anyone could guess" in r.err, r
        assert not (tmp_path / "x.sync").exists() and not (tmp_path / "bk").exists()
        assert _digest(data / "ledger.sqlite3") == store
    (data / "tls" / "chain.key").write_bytes(good)
    assert cli("export", "--out", tmp_path / "x.sync", data=data).code == 0


# -- 2. a link planted while an export writes ---------------------------------------

def _plant_at_open(monkeypatch: pytest.MonkeyPatch, under: Path,
                   plant: Callable[[Path], None], *, files_only: bool = True
                   ) -> list[Path]:
    """Run `plant(path)` just before the first file the export creates for writing
    under `under` (after its checks, before its write: the moment an adversary must
    hit), `path` the full name it is about to open; returns the names opened so.
    `files_only` False: before the first thing opened under `under`, a directory
    on the way to the file included."""
    opened: list[Path] = []
    real = os.open

    def racing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if not files_only or (flags & (os.O_WRONLY | os.O_RDWR) and flags & os.O_CREAT):
            at = kwargs.get("dir_fd")
            full = Path(path) if at is None else Path(os.readlink(f"/proc/self/fd/{at}")) / path
            if under in full.parents:
                if not opened:
                    plant(full)
                opened.append(full)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", racing_open)
    return opened


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    from helpers import new_ledger

    led = new_ledger(tmp_path, "SH01")
    member = led.add_member(led.owner, name="王芳", phone="13800000001")
    led.topup(led.owner, member, 10000)
    yield led
    led.close()


MINE = b"the node user's own file\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(MINE)
    return victim


def _link(at: Path, to: Path) -> None:
    if at.is_symlink() or at.exists():
        at.unlink()
    at.symlink_to(to)


def test_a_sync_file_export_follows_no_link_planted_as_it_writes(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export checked `--out` for a link, then wrote `OUT.part` by path (O_TRUNC,
    following links) and renamed it: a link planted there, or at OUT, after the check
    sent every member's data over a file the node's user may write. Now the file is
    made new (O_EXCL, O_NOFOLLOW, another name if one is there) and renamed over
    whatever OUT is then: a link there is replaced, its target untouched."""
    from crdtledger.syncfile import export_file, read_file

    victim = _victim(tmp_path)
    out = tmp_path / "stick" / "hq.sync"
    out.parent.mkdir()

    def plant(opening: Path) -> None:
        _link(out, victim)
        _link(opening, victim)

    opened = _plant_at_open(monkeypatch, out.parent, plant)
    export_file(ledger, out)
    monkeypatch.undo()
    assert opened and victim.read_bytes() == MINE
    assert not out.is_symlink() and read_file(ledger, out) is not None
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        {"hq.sync", opened[0].name})  # the planted link is left, not written through


def test_a_backup_follows_no_link_planted_as_it_writes(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crdtledger.backups import BACKUP_FILE, write_backup
    from crdtledger.errors import StoreError

    victim = _victim(tmp_path)
    target = tmp_path / "bk"

    def plant(opening: Path) -> None:
        _link(target / BACKUP_FILE, victim)
        _link(opening, victim)

    opened = _plant_at_open(monkeypatch, target, plant)
    # A backup replaces nothing, a link planted at its name neither (the link is not
    # followed, and is left for whoever planted it).
    with pytest.raises(StoreError, match="appeared while this was being written"):
        write_backup(ledger.storage.dir, target)
    monkeypatch.undo()
    assert opened and opened[0].parent == target and victim.read_bytes() == MINE
    assert (target / BACKUP_FILE).is_symlink()
    assert sorted(p.name for p in target.iterdir()) == sorted(
        {BACKUP_FILE, opened[0].name})  # the link planted at the part's name is left too


def test_the_analytics_export_follows_no_link_planted_as_it_writes(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`export-analytics --out` refused links under OUT, then made each month's file
    and the manifest by path: a month's directory swapped for a link to a directory
    elsewhere after that check, or a link at the name written, was written through
    (and that directory made 0700). Now refused with a sentence, nothing elsewhere
    touched; and a link at a file's own name is replaced, never followed."""
    from crdtledger.analytics import export as export_analytics
    from crdtledger.errors import InvalidInput

    victim = _victim(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    theirs = {"part-0.parquet": b"someone else's table\n", "manifest.json": b"{}\n"}
    for name, content in theirs.items():
        (elsewhere / name).write_bytes(content)
    out = tmp_path / "analytics"
    export_analytics(ledger, out)  # an earlier export: the months' directories exist
    months = [p for p in (out / "entries").iterdir() if p.is_dir()]
    assert months
    ledger.add_member(ledger.owner, name="李娜", phone="13800000002")
    ledger.topup(ledger.owner, ledger.add_member(ledger.owner, name="赵丽",
                                                 phone="13800000003"), 500)

    def swap_months(opening: Path) -> None:
        for month in months:
            os.rename(month, month.with_name(month.name + ".old"))
            month.symlink_to(elsewhere, target_is_directory=True)
        if not opening.is_dir():
            _link(opening, victim)

    _plant_at_open(monkeypatch, out, swap_months, files_only=False)
    refused = None
    try:
        export_analytics(ledger, out)
    except InvalidInput as e:
        refused = str(e)
    monkeypatch.undo()
    assert victim.read_bytes() == MINE
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == theirs
    assert elsewhere.stat().st_mode & 0o777 == 0o755
    assert refused is not None and "is a symbolic link" in refused
    # the months put back, a link planted at the very name each file is made under
    for month in months:
        month.unlink()
        os.rename(month.with_name(month.name + ".old"), month)
    opened = _plant_at_open(monkeypatch, out, lambda opening: _link(opening, victim))
    export_analytics(ledger, out)
    monkeypatch.undo()
    assert opened and victim.read_bytes() == MINE
    assert not any(p.is_symlink() for p in out.rglob("*") if p != opened[0])


# -- 3. refused file commands are kept with the refusals ----------------------------

def test_refused_file_commands_are_kept_for_the_owner(cli: Cli, tmp_path: Path) -> None:
    """A cashier's `export`, `import`, `backup` and `export-analytics` refused for
    permission, and a stranger's file (another chain's, altered) refused at `import`,
    were said at the shell and kept nowhere: `audit --refused` showed none. Kept as
    the operations' refusals are, by the name given, never the password; a wrong
    password is kept as the login it is. An input refused (no such file) is not."""
    chain = _chain(cli, tmp_path)
    data = _node(cli, tmp_path, chain, head_office=True)
    assert cli("operator", "add", "--name", "amy", "--password", "secret1", data=data).code == 0
    assert cli("export", "--out", tmp_path / "good.sync", data=data).code == 0
    amy = {"CRDTLEDGER_PASSWORD": "secret1"}
    for args in (("export", "--out", tmp_path / "amy.sync"),
                 ("import", tmp_path / "good.sync"),
                 ("backup", "--out", tmp_path / "amy-bk"),
                 ("export-analytics", "--out", tmp_path / "amy-an")):
        r = cli("--operator", "amy", *args, data=data, env=amy)
        assert r.code != 0 and "may not" in r.err, (args, r)
    r = cli("--operator", "amy", "export", "--out", tmp_path / "x.sync", data=data,
            env={"CRDTLEDGER_PASSWORD": "guess-1234"})
    assert r.code != 0 and "wrong operator name or password" in r.err
    # A stranger's file: another chain's, and ours altered after it was signed.
    other = _node(cli, tmp_path, _chain(cli, tmp_path, "other"), "SH09")
    assert cli("export", "--out", tmp_path / "theirs.sync", data=other).code == 0
    altered = bytearray((tmp_path / "good.sync").read_bytes())
    altered[-5] ^= 0xFF
    (tmp_path / "altered.sync").write_bytes(altered)
    for name, says in (("theirs.sync", "from chain 'other'"), ("altered.sync", "altered")):
        r = cli("import", tmp_path / name, data=data)
        assert r.code != 0 and says in r.err, r
    assert cli("import", tmp_path / "nothing-here.sync", data=data).code != 0

    rows = cli("audit", "--refused", "--json", data=data).json()
    got = [(x["operator_name"], x["operation"], x["code"]) for x in reversed(rows)]
    assert len(got) == 7, got
    assert got == [("amy", "sync.export", "permission_denied"),
                   ("amy", "sync.import", "permission_denied"),
                   ("amy", "backup", "permission_denied"),
                   ("amy", "analytics.export", "permission_denied"),
                   ("amy", "login", "login_failed"),
                   (got[5][0], "sync.import", "foreign_chain"),
                   (got[5][0], "sync.import", "corrupt_sync_file")], got
    assert str(tmp_path / "theirs.sync") in rows[1]["reason"]
    assert str(tmp_path / "altered.sync") in rows[0]["reason"]
    assert str(tmp_path / "amy.sync") in rows[-1]["reason"]
    assert "secret1" not in str(rows) and "guess-1234" not in str(rows)
    assert not (tmp_path / "amy.sync").exists() and not (tmp_path / "amy-bk").exists()


def test_refused_file_routes_of_the_api_are_kept(tmp_path: Path) -> None:
    """GET /sync/export, POST /sync/import and GET /backup refused a cashier (403)
    and a stranger's file (400) and kept none of it; GET /audit?refused=1 now lists
    them, the file named as "the file sent"."""
    from test_api import AMY_PW, BOSS_PW, Api, drive
    from test_api_files import raw

    from crdtledger.syncfile import export_file

    stranger = new_ledger_of(tmp_path / "elsewhere", "SH09", "elsewhere")
    try:
        export_file(stranger, tmp_path / "theirs.sync")
    finally:
        stranger.close()

    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        amy = await api.login("amy", AMY_PW)
        http = api.http
        for method, path, body in (("GET", "/sync/export", None),
                                   ("POST", "/sync/import", b"x"),
                                   ("GET", "/backup", None)):
            status, answer, _ = await raw(http, method, api.base + path, amy, body)
            assert status == 403, answer
        status, answer, _ = await raw(http, "POST", api.base + "/sync/import", boss,
                                      (tmp_path / "theirs.sync").read_bytes())
        assert status == 400 and b"foreign_chain" in answer, answer
        status, rows = await api.call("GET", "/audit?refused=1", token=boss)
        assert status == 200, rows
        assert [(r["operator_name"], r["operation"], r["code"]) for r in reversed(rows)] == [
            ("amy", "sync.export", "permission_denied"),
            ("amy", "sync.import", "permission_denied"),
            ("amy", "backup", "permission_denied"),
            ("boss", "sync.import", "foreign_chain")], rows
        assert "the file sent" in rows[0]["reason"] and str(tmp_path) not in rows[0]["reason"]

    drive(tmp_path, go)


def new_ledger_of(root: Path, node: str, chain: str) -> Ledger:
    Ledger.create(root, node, chain)
    return Ledger.open(root)


@pytest.mark.asyncio
async def test_a_strangers_file_refused_at_the_counter_is_kept(
        counter_app: Any, tmp_path: Path) -> None:
    """The back office's sync page refused another chain's file and an altered one
    (nothing changed) and kept no trace; kept now, by the name it was uploaded as
    (not the counter's temporary path), the owner's page listing them."""
    from app_fixtures import OWNER
    from nicegui import ui
    from nicegui.elements.upload_files import SmallFileUpload
    from test_app_office import second_store

    from crdtledger import audit
    from crdtledger.syncfile import export_file
    from peer.chain import init_chain

    app = counter_app
    await app.login(*OWNER)
    await app.user.open("/office/sync")
    init_chain(tmp_path / "other-chain", "elsewhere")
    foreign = second_store(tmp_path / "foreign", tmp_path / "other-chain", chain="elsewhere")
    try:
        foreign.add_member(foreign.owner, name="陌生人", phone="13600003333")
        export_file(foreign, tmp_path / "foreign.crdtsync")
    finally:
        foreign.close()
    export_file(app.ledger, tmp_path / "ours.crdtsync")
    altered = bytearray((tmp_path / "ours.crdtsync").read_bytes())
    altered[-5] ^= 0xFF
    upload = app.user.find(ui.upload).elements.pop()
    await upload.handle_uploads([SmallFileUpload(
        "stick-foreign.crdtsync", "", (tmp_path / "foreign.crdtsync").read_bytes())])
    await app.user.should_see("另一个连锁")
    await upload.handle_uploads([SmallFileUpload("stick-bad.crdtsync", "", bytes(altered))])
    await app.user.should_see("文件已损坏或不完整")
    await upload.handle_uploads([SmallFileUpload(
        "ours.crdtsync", "", (tmp_path / "ours.crdtsync").read_bytes())])
    await app.user.should_see("已导入")
    rows = audit.refused(app.ledger)
    assert [(r["operator_name"], r["operation"], r["code"]) for r in reversed(rows)] == [
        (OWNER[0], "sync.import", "foreign_chain"),
        (OWNER[0], "sync.import", "corrupt_sync_file")], rows
    assert "stick-foreign.crdtsync" in rows[1]["reason"]
    assert "stick-bad.crdtsync" in rows[0]["reason"] and "import.crdtsync" not in str(rows)
    await app.user.open("/office/audit")
    shown = [r for t in app.user.find(marker="audit-refused").elements for r in t.rows]
    assert [(r["operation"], r["code"]) for r in shown] == [
        ("导入同步文件", "文件损坏或被改动"), ("导入同步文件", "其他连锁的文件")], shown


# -- 3. what the link-proof exports left (the fixer's left items) --------------------

def test_a_backup_replaces_no_backup_that_appears_while_it_writes(
        cli: Cli, ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`backup` said it never overwrites, but looked before its rename: a second backup
    (or any file) made at TARGET/ledger.backup in between was replaced. Now the file is
    linked to its name, which fails when anything is there: refused with a sentence,
    the other backup whole, no `.part` left. Also where the filesystem has no hard
    links (a FAT stick: link refused with EPERM), by a look just before the rename."""
    from crdtledger.backups import BACKUP_FILE, write_backup
    from crdtledger.errors import StoreError

    first = write_backup(ledger.storage.dir, tmp_path / "first")
    theirs = first.read_bytes()  # a whole backup, as a second `backup` run would make
    target = tmp_path / "bk"
    opened = _plant_at_open(monkeypatch, target,
                            lambda _opening: (target / BACKUP_FILE).write_bytes(theirs))
    with pytest.raises(StoreError) as refused:
        write_backup(ledger.storage.dir, target)
    monkeypatch.undo()
    assert opened and str(target / BACKUP_FILE) in str(refused.value), refused.value
    assert "appeared while this was being written" in str(refused.value)
    assert (target / BACKUP_FILE).read_bytes() == theirs
    assert [p.name for p in target.iterdir()] == [BACKUP_FILE]
    # The same backup into an empty directory is written (the link is the only change).
    assert write_backup(ledger.storage.dir, tmp_path / "bk2").read_bytes().startswith(
        b"CRDTLEDGER-SEALED backup")
    assert [p.name for p in (tmp_path / "bk2").iterdir()] == [BACKUP_FILE]

    def no_links(*_args: Any, **_kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")  # what vfat's link says

    monkeypatch.setattr(os, "link", no_links)
    assert write_backup(ledger.storage.dir, tmp_path / "fat").exists()
    assert [p.name for p in (tmp_path / "fat").iterdir()] == [BACKUP_FILE]
    fat = tmp_path / "fat2"
    _plant_at_open(monkeypatch, fat, lambda _opening: (fat / BACKUP_FILE).write_bytes(theirs))
    with pytest.raises(StoreError, match="appeared while this was being written"):
        write_backup(ledger.storage.dir, fat)
    monkeypatch.undo()
    assert (fat / BACKUP_FILE).read_bytes() == theirs
    assert [p.name for p in fat.iterdir()] == [BACKUP_FILE]


# A real command-line export stopped part-way: its `.part` written and synced, not yet
# renamed (the moment a SIGKILL or the power leaves one behind), until it is killed.
_STALL = """
import os, runpy, sys, time
real, marker = os.fsync, sys.argv[1]
def stall(fd):
    real(fd)
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
        open(marker, "w").close()
        time.sleep(600)
os.fsync = stall
sys.argv = ["crdtledger", *sys.argv[2:]]
runpy.run_module("peer", run_name="__main__", alter_sys=True)
"""


def _stalled_export(tmp_path: Path, data: Path, *args: Any) -> Any:
    import subprocess
    import sys
    import time

    from conftest import cli_env

    marker = tmp_path / f"stalled-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", _STALL, marker, *map(str, args),
                             "--data", data], env=cli_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the export did not stall: {proc.communicate()[1]!r}")
        time.sleep(0.05)
    return proc


def _killed_export(tmp_path: Path, data: Path, where: Path, name: str, *args: Any) -> str:
    """An export stalled after its `.part` is written and synced, then killed with
    SIGKILL: the name of the one `.part` it left in `where` (no file at `name`)."""
    import signal

    killed = _stalled_export(tmp_path, data, *args)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    left = [p.name for p in where.iterdir()]
    assert len(left) == 1 and left[0].startswith(f"{name}.") and left[0].endswith(".part")
    assert (where / left[0]).stat().st_size > 0 and not (where / name).exists()
    return left[0]


def test_an_export_sweeps_the_part_files_killed_exports_left(
        cli: Cli, tmp_path: Path) -> None:
    """A real `export --out` killed with SIGKILL part-way left `hq.sync.<8 hex>.part`
    (every member's data, under a random name) that nothing removed: a nightly export
    that crashed filled the disk. The next export to that name removes the ones no
    running export holds (each writer locks its own), and nothing else: not a running
    export's, not a link named so (nor what it points at), not a FIFO named so (which
    must not hang it), not another target's, not a file of another name."""
    import signal
    import stat as stat_

    chain = _chain(cli, tmp_path)
    data = _node(cli, tmp_path, chain)
    stick = tmp_path / "stick"
    stick.mkdir()
    out = stick / "hq.sync"
    left = [_killed_export(tmp_path, data, stick, "hq.sync", "export", "--out", out)]
    # Running meanwhile: another branch's export to that name (one store is locked by
    # the export that runs on it).
    running = _stalled_export(tmp_path, _node(cli, tmp_path, chain, "SH02"),
                              "export", "--out", out)
    try:
        held = sorted({p.name for p in stick.iterdir()} - set(left))
        assert len(held) == 1, held
        victim = _victim(tmp_path)
        (stick / "hq.sync.0badc0de.part").symlink_to(victim)
        os.mkfifo(stick / "hq.sync.ff00ff00.part")
        others = {"other.sync.deadbeef.part": b"another target's\n",
                  "hq.sync.part": b"a name of mine\n", "hq.sync.12345678.part.txt": b"x\n"}
        for name, content in others.items():
            (stick / name).write_bytes(content)
        r = cli("export", "--out", out, data=data)
        assert r.code == 0, r.err
        now = {p.name for p in stick.iterdir()}
        assert left[0] not in now, now  # the killed export's: removed
        assert now == {"hq.sync", *held, "hq.sync.0badc0de.part", "hq.sync.ff00ff00.part",
                       *others}, now
        assert (stick / "hq.sync.0badc0de.part").is_symlink() and victim.read_bytes() == MINE
        assert stat_.S_ISFIFO((stick / "hq.sync.ff00ff00.part").lstat().st_mode)
        assert {n: (stick / n).read_bytes() for n in others} == others
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait()
    # Killed too: the next export removes its file.
    assert cli("export", "--out", out, data=data).code == 0
    assert held[0] not in {p.name for p in stick.iterdir()}


def test_a_backup_killed_part_way_is_swept_by_the_next_backup_there(
        cli: Cli, tmp_path: Path) -> None:
    """The nightly `backup --out` killed part-way left `ledger.backup.<8 hex>.part` on
    the stick; the next backup into that directory (the killed one made no backup, so
    it is still an empty target) removes it and writes its own."""

    chain = _chain(cli, tmp_path)
    data = _node(cli, tmp_path, chain)
    target = tmp_path / "bk"
    _killed_export(tmp_path, data, target, "ledger.backup", "backup", "--out", target)
    r = cli("backup", "--out", target, data=data)
    assert r.code == 0, r.err
    assert [p.name for p in target.iterdir()] == ["ledger.backup"]
