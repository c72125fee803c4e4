"""Branch nodes as real processes over real mutual TLS on 127.0.0.1.

Every assertion reads what a shop would see: the `crdtledger` CLI (which goes
through the running node), `/health` and `/metrics`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from cluster import NodeProc, balance, cluster, member_with_cash, wait_for

from crdtledger.storage import DB_FILE

pytestmark = pytest.mark.slow


def digests_equal(*nodes: NodeProc) -> bool:
    return len({n.http("GET", "/health")["digest"] for n in nodes}) == 1


def converged(*nodes: NodeProc) -> None:
    wait_for(lambda: digests_equal(*nodes), what="all nodes to hold the same data")


def test_three_nodes_with_static_peers_converge(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.add("SH01").start()
        c.add("SH02", peers=("SH01",)).start()
        c.add("HZ01", peers=("SH01", "SH02")).start()
        members = {name: member_with_cash(c[name], "100.00", phone=f"1380000000{i}")
                   for i, name in enumerate(("SH01", "SH02", "HZ01"))}
        converged(c["SH01"], c["SH02"], c["HZ01"])
        for name in ("SH01", "SH02", "HZ01"):
            for member in members.values():
                assert balance(c[name], member) is not None
                assert balance(c[name], member)["cash"] == 10000  # type: ignore[index]
        status = c["HZ01"].status()
        assert status["running"] and {p["node"] for p in status["peers"]} == {"SH01", "SH02"}
        assert all(p["connected"] for p in status["peers"])


def test_mdns_finds_a_peer_without_any_address(tmp_path: Path) -> None:
    with cluster(tmp_path) as c, cluster(tmp_path, "other-chain") as other:
        stranger = other.add("FX01", mdns=True).start()  # another chain in the same mall
        a = c.add("SH01", mdns=True).start()
        b = c.add("SH02", mdns=True).start()
        wait_for(lambda: "SH02" in a.connected() and "SH01" in b.connected(),
                 what="mDNS discovery")
        member = member_with_cash(a, "10.00")
        wait_for(lambda: balance(b, member), what="the member at SH02")
        # Seen on the network, never dialled: its TXT names another chain's CA.
        assert stranger.status()["peers"] == []
        assert "FX01" not in a.connected() | b.connected()
        assert "FX01" not in a.logs() + b.logs()


def test_line_topology_relays_hop_by_hop(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        a = c.add("SH01").start()
        b = c.add("SH02", peers=("SH01",)).start()
        z = c.add("HZ01", peers=("SH02",)).start()
        wait_for(lambda: b.connected() == {"SH01", "HZ01"}, what="the line A-B-C")
        assert "HZ01" not in a.connected()
        member = member_with_cash(a, "50.00")
        assert wait_for(lambda: balance(z, member), what="A's member at C")["cash"] == 5000
        back = member_with_cash(z, "20.00", phone="13900000000")
        assert wait_for(lambda: balance(a, back), what="C's member at A")["cash"] == 2000
        converged(a, b, z)


def test_rights_move_automatically_and_a_dead_holder_is_named(tmp_path: Path) -> None:
    """The issue's acceptance, step by step."""
    with cluster(tmp_path) as c:
        a = c.add("SH01").start()
        b = c.add("SH02", peers=("SH01",)).start()
        member = member_with_cash(a, "100.00")
        wait_for(lambda: (balance(b, member) or {}).get("cash") == 10000, timeout=5,
                 what="the top-up at SH02 within 5 s")
        r = b.cli("debit", "--member", member, "--amount", "30.00", "--json")
        assert r.code == 0, r.err
        assert r.json()["node"] == "SH02"
        a.kill()
        refused = b.cli("debit", "--member", member, "--amount", "70.00", "--json")
        assert refused.code == 1
        assert "SH01" in refused.err and "rights_elsewhere" in refused.out
        a.start()
        wait_for(lambda: "SH01" in b.connected(), what="SH02 to reconnect to SH01")
        ok = b.cli("debit", "--member", member, "--amount", "70.00", "--json")
        assert ok.code == 0, ok.err
        converged(a, b)
        for node in (a, b):
            assert balance(node, member)["cash"] == 0  # type: ignore[index]
        metrics = b.http("GET", "/metrics")
        assert 'crdtledger_rights_transfers_total{direction="in"}' in metrics
        assert 'crdtledger_refused_operations_total{reason="rights_elsewhere"} 1.0' in metrics
        assert 'crdtledger_operations_total{kind="debit"} 2.0' in metrics


def test_rights_reach_a_branch_through_a_hub(tmp_path: Path) -> None:
    """Shops behind NAT dial a hub and never each other; rights still move, the hub
    fetching them on the asking shop's behalf."""
    with cluster(tmp_path) as c:
        hub = c.add("HQ01").start()
        a = c.add("SH01", peers=("HQ01",)).start()
        z = c.add("HZ01", peers=("HQ01",)).start()
        wait_for(lambda: hub.connected() == {"SH01", "HZ01"}, what="both shops at the hub")
        member = member_with_cash(a, "100.00")
        wait_for(lambda: balance(z, member), what="the member at HZ01")
        r = z.cli("debit", "--member", member, "--amount", "30.00")
        assert r.code == 0, r.err
        converged(a, hub, z)
        rights = a.cli("rights", "show", "--member", member, "--json").json()
        assert rights["HZ01"] >= 0 and sum(rights.values()) == 7000


def test_kill9_mid_stream_loses_no_acknowledged_debit(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        a = c.add("SH01").start()
        b = c.add("SH02", peers=("SH01",)).start()
        member = member_with_cash(b, "1000.00")
        converged(a, b)
        acknowledged: list[str] = []
        stop = threading.Event()

        def swipe() -> None:
            while not stop.is_set():
                r = b.cli("debit", "--member", member, "--amount", "1.00", "--json")
                if r.code == 0:
                    acknowledged.append(r.json()["id"])

        worker = threading.Thread(target=swipe)
        worker.start()
        wait_for(lambda: len(acknowledged) >= 5, what="a few debits")
        b.kill()
        stop.set()
        worker.join(60)
        b.start()
        converged(a, b)
        for node in (a, b):
            history = node.cli("history", "--member", member, "--limit", "1000", "--json").json()
            ids = {e["id"] for e in history}
            assert set(acknowledged) <= ids, f"{node.name} lost acknowledged debits"
            debits = sum(1 for e in history if e["kind"] == "debit")
            assert balance(node, member)["cash"] == 100000 - 100 * debits  # type: ignore[index]


def test_partition_both_sides_sell_within_rights_and_heal(tmp_path: Path) -> None:
    from linkproxy import LinkProxy

    with cluster(tmp_path) as c, LinkProxy() as link:
        a = c.add("SH01").start()
        link.target = a.sync_port
        b = c.add("SH02")
        b.peers = [f"wss://127.0.0.1:{link.port}"]
        b.start()
        member = member_with_cash(a, "100.00")
        wait_for(lambda: balance(b, member), what="the member at SH02")
        assert b.cli("debit", "--member", member, "--amount", "10.00").code == 0
        rights = a.cli("rights", "show", "--member", member, "--json").json()
        link.cut()
        wait_for(lambda: not b.connected(), what="the partition")
        # Each side sells what it holds, and no more.
        held_a, held_b = rights["SH01"], rights["SH02"]
        assert a.cli("debit", "--member", member, "--amount", f"{held_a / 100:.2f}").code == 0
        assert b.cli("debit", "--member", member, "--amount", f"{held_b / 100:.2f}").code == 0
        late = b.cli("debit", "--member", member, "--amount", "0.01")
        assert late.code == 1 and "SH01" in late.err
        link.heal()
        converged(a, b)
        for node in (a, b):
            bal = balance(node, member)
            assert bal is not None and bal["cash"] == 0
            rights = node.cli("rights", "show", "--member", member, "--json").json()
            assert all(v >= 0 for v in rights.values())


def test_status_without_a_running_node_reads_the_store(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        a = c.add("SH01")
        st = a.status()
        # Its certificate's end, ms since 1970 (an enrolled node: years ahead).
        assert st.pop("certificate_expires") > time.time() * 1000 + 365 * 86_400_000
        assert st == {"node": "SH01", "chain": c.chain.name, "running": False, "peers": [],
                      "restored": None, "another_pc": None, "faults": [], "refused": [],
                      "closing_differs": None,
                      "rights_refused": {}, "unfunded": {}, "revoked": False,
                      "timezone": "Asia/Shanghai",  # the zone its times are shown in
                      "store_checked": True, "store_damaged": None,  # read whole: small
                      "store_unprojected": {},  # the documents against the tables
                      "backup_waiting": None}  # no ledger.backup copied in to restore



def test_rows_deleted_under_a_running_node_are_said_by_its_store_check(
        tmp_path: Path) -> None:
    """An `entries` row deleted with sqlite3 while the node runs: the documents live in
    the node's process, so `status --check` asks the node to read them against its
    tables (a stopped store is read by the command itself: tests/test_backups.py)."""
    with cluster(tmp_path) as c:
        a = c.add("SH01").start()
        member = member_with_cash(a, "10.00")
        assert a.cli("status", "--check", "--json").json()["store_unprojected"] == {}
        with contextlib.closing(sqlite3.connect(a.data / DB_FILE)) as db, db:
            db.execute("DELETE FROM entries WHERE kind = 'topup'")
        r = a.cli("status", "--check")
        assert r.code == 0 and "running" in r.out, r.err
        assert "EDITED store: its documents hold 1 entry its tables lack" in r.out, r.out
        # Unasked, a running node's documents are not read (seconds per 100k entries
        # of its tills' time): said as such, never as a clean store.
        r = a.cli("status")
        assert "EDITED" not in r.out and "status --check" in r.out, r.out
        assert balance(a, member) is not None


def test_a_renewed_certificate_joins_and_the_old_one_is_kept(tmp_path: Path) -> None:
    from cryptography import x509

    from peer.chain import node_serial

    with cluster(tmp_path) as c:
        a = c.add("SH01").start()
        b = c.add("SH02", peers=("SH01",))
        old = node_serial(b.data)
        r = b.cli("chain", "renew", "--chain", str(c.chain), "--json")
        assert r.code == 0, r.err
        assert node_serial(b.data) != old
        kept = Path(r.json()["replaced"]) / "node.crt"
        assert x509.load_pem_x509_certificate(kept.read_bytes()).serial_number == old
        b.start()
        wait_for(lambda: "SH01" in b.connected(), what="the renewed node to connect")
        assert "SH02" in a.connected()
