"""The collector's own Prometheus metrics, in a registry of its own (several collectors can
run in one process in tests and the demo)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SCRAPE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.scrape_duration = Histogram(
            "infergate_collector_scrape_duration_seconds",
            "Time to fetch and parse one /metrics page, failed scrapes included.",
            ["outcome"],
            buckets=SCRAPE_BUCKETS,
            registry=r,
        )
        self.scrapes_ok = self.scrape_duration.labels("ok")
        self.scrapes_failed = self.scrape_duration.labels("error")
        self.scrape_errors = Counter(
            "infergate_collector_scrape_errors_total",
            "Failed scrapes by endpoint and reason (timeout, connect, http, parse, other).",
            ["namespace", "pool", "pod", "reason"],
            registry=r,
        )
        self.publishes = Counter(
            "infergate_collector_publish_total",
            "Messages published, by kind (snapshot, tombstone) and reason "
            "(change, heartbeat, reconnect, removed).",
            ["kind", "reason"],
            registry=r,
        )
        self.publish_errors = Counter(
            "infergate_collector_publish_errors_total",
            "Publishes that failed (the latest value is retried).",
            registry=r,
        )
        self.publish_deferred = Counter(
            "infergate_collector_publish_deferred_total",
            "Updates held back while NATS was disconnected (only the latest per endpoint is kept).",
            registry=r,
        )
        self.endpoints = Gauge(
            "infergate_collector_endpoints",
            "Endpoints tracked, by health.",
            ["state"],
            registry=r,
        )
        self.nats_connected = Gauge(
            "infergate_collector_nats_connected",
            "1 while connected to NATS.",
            registry=r,
        )
        self.discovery_synced = Gauge(
            "infergate_collector_discovery_synced",
            "1 once the target discovery has its first complete view.",
            registry=r,
        )
        self.targets_file_errors = Counter(
            "infergate_collector_targets_file_errors_total",
            "Rejected versions of the targets file (the previous targets stay in force).",
            registry=r,
        )
        self.stream_errors = Counter(
            "infergate_collector_stream_setup_errors_total",
            "Failed attempts to create or update the JetStream streams.",
            registry=r,
        )

    def forget_endpoint(self, namespace: str, pool: str, pod: str) -> None:
        """Drop a removed endpoint's series so label cardinality follows the live pods."""
        for reason in ("timeout", "connect", "http", "parse", "other"):
            try:
                self.scrape_errors.remove(namespace, pool, pod, reason)
            except KeyError:
                pass
