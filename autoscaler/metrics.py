"""The same aggregates as Prometheus gauges, for KEDA or prometheus-adapter users, plus self-metrics.

The gauges are produced by a custom collector at scrape time from :meth:`Aggregator.series`,
so a model that has gone stale disappears from ``/metrics`` exactly as it disappears from
the External Metrics API, rather than lingering at its last value.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from autoscaler.aggregate import METRICS, Aggregator
from shared.tables import TableCollector

_LABELS = ["namespace", "pool", "model_name", "target_model"]


def prom_name(metric: str) -> str:
    """``infergate-inflight-requests`` -> ``infergate_autoscaler_inflight_requests``."""
    return "infergate_autoscaler_" + metric.removeprefix("infergate-").replace("-", "_")


class _AggregateCollector(Collector):
    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {m: GaugeMetricFamily(prom_name(m), help_, labels=_LABELS) for m, help_ in METRICS.items()}
        for s in self.aggregator.series():
            families[s.metric].add_metric(
                [s.namespace, s.labels["pool"], s.labels["model_name"], s.labels["target_model"]], s.value
            )
        yield from families.values()


class AutoscalerMetrics:
    """Everything the autoscaler exports, on one per-instance registry."""

    def __init__(self, registry: CollectorRegistry, aggregator: Aggregator) -> None:
        registry.register(_AggregateCollector(aggregator))
        registry.register(TableCollector("infergate_autoscaler", aggregator.tables()))
        self.messages = Counter(
            "infergate_autoscaler_messages", "bus messages applied, by kind", ["kind"], registry=registry
        )
        self.decode_failures = Counter(
            "infergate_autoscaler_decode_failures",
            "bus messages that did not decode",
            ["stream"],
            registry=registry,
        )
        self.api_requests = Counter(
            "infergate_autoscaler_api_requests",
            "External Metrics API responses, by code",
            ["code"],
            registry=registry,
        )
