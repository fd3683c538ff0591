"""Prometheus metrics of the sharing layer, on a per-instance registry.

Every number an operator needs to tell whether replicas see each other: how much is
published and dropped, how much of peers' traffic is applied, ignored as a duplicate or
undecodable, how far behind it arrives, and which peers are alive.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.tables import TableCollector

__all__ = ["SharingMetrics"]


class SharingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.published_events = Counter(
            "infergate_sharing_published_events_total", "own events published to peers", ["kind"], registry=r
        )
        self.published_batches = Counter(
            "infergate_sharing_published_batches_total", "EventBatch messages published", registry=r
        )
        self.published_bytes = Counter(
            "infergate_sharing_published_bytes_total", "payload bytes published", registry=r
        )
        self.dropped_events = Counter(
            "infergate_sharing_dropped_events_total",
            "own events never published (buffer full while NATS away, too old, publish or encode error)",
            ["reason"],
            registry=r,
        )
        self.buffered_events = Gauge(
            "infergate_sharing_buffered_events", "own events waiting to be published", registry=r
        )
        self.applied_events = Counter(
            "infergate_sharing_applied_events_total",
            "peers' events applied to the pool state",
            ["kind", "source"],
            registry=r,
        )
        self.duplicate_events = Counter(
            "infergate_sharing_duplicate_events_total",
            "events ignored because they were already applied (live/replay overlap, redelivery)",
            registry=r,
        )
        self.decode_errors = Counter(
            "infergate_sharing_decode_errors_total",
            "payloads on the event subjects that did not decode",
            registry=r,
        )
        self.apply_lag = Histogram(
            "infergate_sharing_apply_lag_seconds",
            "wall-clock delay from a peer's event to its application here (live events)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.replays = Counter(
            "infergate_sharing_replays_total", "JetStream replays run", ["reason", "outcome"], registry=r
        )
        self.peers_alive = Gauge(
            "infergate_sharing_peers_alive", "peer replicas heard from recently", registry=r
        )
        self.peer_rank = Gauge(
            "infergate_sharing_peer_rank",
            "this replica's place (0-based) among the live replicas, ordered by name",
            registry=r,
        )
        self.peer_unseen = Gauge(
            "infergate_sharing_peer_unseen",
            "peers' assignments not yet applied here, typically (their rate x the apply delay)",
            registry=r,
        )
        self.peers_lost = Counter(
            "infergate_sharing_peers_lost_total",
            "peers declared gone after missing heartbeats (their open requests released)",
            registry=r,
        )
        self.name_conflicts = Counter(
            "infergate_sharing_replica_name_conflicts_total",
            "messages on this replica's own subject published by another live process under its name",
            registry=r,
        )
        self.ready = Gauge("infergate_sharing_ready", "1 once the initial replay is done", registry=r)

    def tables(self, tables: dict[str, tuple[Callable[[], int], int, Callable[[], int]]]) -> None:
        """Export the listener's bounded tables (``infergate_sharing_table_entries{table}``)."""
        self.registry.register(TableCollector("infergate_sharing", tables))
