"""Flow-control metrics under upstream's names, both families.

llm-d-router's canonical ``llm_d_epp_flow_control_*`` and GIE's
``inference_extension_flow_control_*`` (same meaning, kept so existing dashboards work):

* ``…_request_queue_duration_seconds{priority, outcome, inference_pool}``: time from
  enqueue to outcome (``Dispatched``, ``RejectedCapacity``, ``RejectedOther``,
  ``EvictedTTL``, ``EvictedContextCancelled``); requests that go at once count with 0;
* ``…_dispatch_cycle_duration_seconds``: one pump of the controller;
* ``…_queue_size`` / ``…_queue_bytes{priority, inference_pool}``: computed at scrape;
* ``…_pool_saturation{inference_pool}``: the detector's 0..1 figure, at scrape.

Upstream also labels by ``fairness_id`` and model; here the labels are the configured
priorities and the fixed outcome names only, so the series stay bounded whatever clients
send (per-tenant figures are in the request metrics, which cap their fairness ids).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["FlowMetrics"]

_FAMILIES = ("llm_d_epp_flow_control", "inference_extension_flow_control")
_QUEUE = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_CYCLE = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class _Gauges(Collector):
    def __init__(self, pool: str, sizes: Callable[[], list], saturation: Callable[[], float]) -> None:
        self.pool = pool
        self.sizes = sizes
        self.sat = saturation

    def collect(self):
        rows = self.sizes()
        sat = self.sat()
        for fam in _FAMILIES:
            size = GaugeMetricFamily(
                f"{fam}_queue_size", "Requests held in the flow-control queue",
                labels=["priority", "inference_pool"],
            )  # fmt: skip
            nbytes = GaugeMetricFamily(
                f"{fam}_queue_bytes", "Bytes of requests held in the flow-control queue",
                labels=["priority", "inference_pool"],
            )  # fmt: skip
            for prio, n, b in rows:
                size.add_metric([str(prio), self.pool], n)
                nbytes.add_metric([str(prio), self.pool], b)
            pool = GaugeMetricFamily(
                f"{fam}_pool_saturation", "Saturation of the pool per the flow-control detector (0..1)",
                labels=["inference_pool"],
            )  # fmt: skip
            pool.add_metric([self.pool], sat)
            yield size
            yield nbytes
            yield pool


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry | None, pool: str = "") -> None:
        self.pool = pool
        self.registry = registry
        self.queue = [
            Histogram(
                f"{fam}_request_queue_duration_seconds",
                "Time requests spend in flow control, enqueue to outcome",
                ["priority", "outcome", "inference_pool"],
                buckets=_QUEUE,
                registry=registry,
            )
            for fam in _FAMILIES
        ]
        self.cycles = [
            Histogram(
                f"{fam}_dispatch_cycle_duration_seconds",
                "One dispatch cycle of flow control",
                buckets=_CYCLE,
                registry=registry,
            )
            for fam in _FAMILIES
        ]
        self._children: dict[tuple[int, str], list] = {}

    def outcome(self, priority: int, outcome: str, seconds: float) -> None:
        key = (priority, outcome)
        ch = self._children.get(key)
        if ch is None:
            if len(self._children) > 1000:  # priorities come from the config; a guard all the same
                key = (0, outcome)
            ch = self._children[key] = [h.labels(str(key[0]), outcome, self.pool) for h in self.queue]
        for h in ch:
            h.observe(seconds)

    def cycle(self, seconds: float) -> None:
        for h in self.cycles:
            h.observe(seconds)

    def add_gauges(self, sizes: Callable[[], list], saturation: Callable[[], float]) -> None:
        if self.registry is not None:
            self.registry.register(_Gauges(self.pool, sizes, saturation))
