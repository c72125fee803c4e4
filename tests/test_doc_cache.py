"""The documents a node keeps in memory are bounded in bytes, not only in number: a
branch joining a chain of a million entries loaded every month of its history and
kept them all (3 GB). Closing one must never lose a change nor let memory and disk
part: a document changed and not yet logged stays; one logged in the open
transaction is read back from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import doc_content, new_ledger, projections, sync

from crdtledger import replica as replica_mod
from crdtledger import storage as storage_mod
from crdtledger.errors import RemoteProtocolError
from crdtledger.ledger import Ledger
from crdtledger.syncfile import CorruptSyncFile, export_file, import_file


def _history(tmp_path: Path) -> tuple[Ledger, list[str]]:
    """A writer whose history spans several documents: member shards, the month's
    ledger, cards."""
    a = new_ledger(tmp_path, "SH01")
    members = [a.add_member(a.owner, name=f"m{i}", phone=f"138000002{i:02d}") for i in range(8)]
    for i in range(40):
        a.topup(a.owner, members[i % 8], 100 + i)
    for i in range(8):
        a.debit(a.owner, members[i], amount=50)
    return a, members


def _memory_matches_disk(ledger: Ledger) -> None:
    """Each document still in memory is at the state its store holds."""
    svs = ledger.state_vectors()
    for name, ld in ledger.storage._docs.items():
        assert bytes(ld.doc.get_state()) == svs.get(name, b"\x00"), name  # never written: empty


@pytest.fixture
def tiny_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every load closes all but the document just asked for (and any not logged)."""
    monkeypatch.setattr(storage_mod, "DOC_CACHE_BYTES", 0)
    monkeypatch.setattr(storage_mod, "DOC_CACHE_KEPT", 1)


def test_a_catch_up_under_a_small_budget_keeps_one_document_and_ends_the_same(
        tmp_path: Path, tiny_cache: None) -> None:
    a, members = _history(tmp_path)
    b = new_ledger(tmp_path, "SH02")
    sync(a, b)
    assert len(b.storage._docs) == 1
    _memory_matches_disk(b)
    assert b.positions() == a.positions()
    assert projections(b) == projections(a)
    assert doc_content(b) == doc_content(a)
    assert [b.balance(m) for m in members] == [a.balance(m) for m in members]
    b.topup(b.owner, members[0], 10)  # and it sells on what it reloads
    b.debit(b.owner, members[0], amount=1)
    assert b.balance(members[0])["cash"] == a.balance(members[0])["cash"] + 9


def test_a_sync_file_applied_in_one_transaction_reloads_what_it_logged(
        tmp_path: Path, tiny_cache: None) -> None:
    """A file is all or nothing: one transaction. Documents closed after their records
    were logged in it are read back from that transaction when the file's later
    records touch them again."""
    a, _members = _history(tmp_path)
    b = new_ledger(tmp_path, "SH02")
    export_file(a, tmp_path / "all.sync")
    import_file(b, tmp_path / "all.sync")
    _memory_matches_disk(b)
    assert projections(b) == projections(a)
    assert doc_content(b) == doc_content(a)


def test_a_file_refused_at_its_end_leaves_memory_and_disk_as_they_were(
        tmp_path: Path, tiny_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _members = _history(tmp_path)
    b = new_ledger(tmp_path, "SH02")
    b.add_member(b.owner, name="here", phone="13900000001")
    before_docs, before_rows = doc_content(b), projections(b)
    export_file(a, tmp_path / "all.sync")
    real = replica_mod.project_deferred

    def refuse_at_the_end(*args: object) -> None:
        real(*args)  # type: ignore[arg-type]
        raise RemoteProtocolError("refused at the end, after every document was logged")

    monkeypatch.setattr(replica_mod, "project_deferred", refuse_at_the_end)
    with pytest.raises(CorruptSyncFile):
        import_file(b, tmp_path / "all.sync")
    monkeypatch.undo()
    _memory_matches_disk(b)
    assert projections(b) == before_rows
    assert doc_content(b) == before_docs


def test_a_document_changed_and_not_yet_logged_is_never_closed(tmp_path: Path,
                                                               tiny_cache: None) -> None:
    a, _members = _history(tmp_path)
    st = a.storage
    names = [n for n in a.state_vectors() if n != "rules"]
    with pytest.raises(RuntimeError), st.transaction():
        ld = st.doc("rules")
        ld.changed()
        with ld.doc.transaction():
            ld.roots["rules"]["probe"] = {"not": "logged"}
        for name in names:  # each load would close every other document
            st.doc(name)
        assert st._docs["rules"] is ld  # kept: its change is only in memory
        st.record(ld, ld.take_updates())
        st.doc(names[0])
        assert "rules" not in st._docs  # logged: may go, and is read back if asked
        assert st.doc("rules").roots["rules"].get("probe") == {"not": "logged"}
        raise RuntimeError("roll back")
    assert st.doc("rules").roots["rules"].get("probe") is None
    _memory_matches_disk(a)


def test_a_large_document_stays_while_in_use(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the budget the least recently used go first: the month a till sells on
    stays loaded while another document is read (reloading a large month for every
    sale would cost seconds each)."""
    monkeypatch.setattr(storage_mod, "DOC_CACHE_BYTES", 0)
    a, members = _history(tmp_path)
    st = a.storage
    month = next(n for n in st._docs if n.startswith("ledger/"))
    kept = st._docs[month]
    a.add_member(a.owner, name="late", phone="13900000009")  # another document, loaded
    a.debit(a.owner, members[1], amount=1)
    assert st._docs.get(month) is kept
