"""What a branch node counts, in Prometheus' text format at `/metrics`.

Each node has its own registry (not prometheus_client's global one), so several
nodes can live in one process: the tests and the counter app's demo do that.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.operations = Counter(
            "crdtledger_operations",
            "Operations done at this node: by command, or by ledger entry kind",
            ["kind"], registry=r)
        self.refused = Counter(
            "crdtledger_refused_operations", "Writes the ledger refused, by reason",
            ["reason"], registry=r)
        self.rights_transfers = Counter(
            "crdtledger_rights_transfers",
            "Automatic rights transfers: in = granted to us, out = we granted",
            ["direction"], registry=r)
        self.rights_fetch = Histogram(
            "crdtledger_rights_fetch_seconds",
            "Time a write waited for rights from other branches",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0), registry=r)
        self.peers_connected = Gauge(
            "crdtledger_peers_connected", "Peers with an open sync connection", registry=r)
        self.peer_lag = Gauge(
            "crdtledger_peer_lag_operations",
            "Operations one side lacks, as of the last anti-entropy round "
            "(in = we lack from the peer, out = the peer lacks from us)",
            ["peer", "direction"], registry=r)
        self.sync_bytes = Counter(
            "crdtledger_sync_bytes", "Sync protocol bytes, by peer and direction",
            ["peer", "direction"], registry=r)
        self.clock_skew = Gauge(
            "crdtledger_peer_clock_skew_seconds",
            "Peer's wall clock minus ours, at its last hello", ["peer"], registry=r)
        self.clock_skew_seen = Counter(
            "crdtledger_clock_skew_events",
            "Hellos from a peer whose clock was off by more than the allowed skew",
            ["peer"], registry=r)
        self.protocol_errors = Counter(
            "crdtledger_peer_protocol_errors",
            "Connections closed because the peer broke the protocol", registry=r)
        self.records_refused = Counter(
            "crdtledger_records_refused",
            "Log records refused from peers and files: unverifiable (unknown or revoked "
            "signer, altered), breaking a write rule, or a fork; the node's log and "
            "/sync/status say which", registry=r)
        self.sync_queued = Gauge(
            "crdtledger_sync_queued_bytes",
            "Frames waiting to be written to a peer's connection: a long answer is read "
            "from the store a slice at a time as this drains", ["peer"], registry=r)

        # The labelled children of `operations`, by label values: one a kind, looked
        # up once rather than at every operation (Counter.labels takes a lock).
        self._operations: dict[tuple[str, ...], Counter] = {}

    def count_operation(self, labels: tuple[str, ...]) -> None:
        child = self._operations.get(labels)
        if child is None:
            child = self._operations[labels] = self.operations.labels(*labels)
        child.inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
