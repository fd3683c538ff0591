"""Prometheus metrics under upstream's names (so existing dashboards work) plus InferGate's own.

One :class:`PickerMetrics` per picker instance, on its own ``CollectorRegistry``. Label
children are cached per (model, target) so the hot path does a dict lookup, not a
``labels()`` call. Pool gauges are computed from the view at scrape time, costing the
request path nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["PickerMetrics"]

_LATENCY = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_TOKENS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
    131072,
    262144,
    524288,
    1048576,
)
_NTPOT = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.8,
    1,
    1.5,
    2,
    3,
    4.5,
    6,
    12,
    18,
    24,
    30,
    36,
    48,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
)
_SCHED = (0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class _ModelChildren:
    __slots__ = ("duration", "input_tokens", "ntpot", "output_tokens", "requests", "ttft")

    def __init__(self, m: PickerMetrics, model: str, target: str) -> None:
        self.requests = m.requests.labels(model, target)
        self.duration = m.duration.labels(model, target)
        self.input_tokens = m.input_tokens.labels(model, target)
        self.output_tokens = m.output_tokens.labels(model, target)
        self.ntpot = m.ntpot.labels(model, target)
        self.ttft = m.ttft.labels(model, target)


class _PoolCollector(Collector):
    """Reads the view's stats at scrape time."""

    def __init__(
        self, pool: str, stats: Callable[[], dict[str, float]], counters: Callable[[], dict]
    ) -> None:
        self.pool = pool
        self.stats = stats
        self.counters = counters

    def collect(self):
        s = self.stats()
        c = self.counters()
        for name, key, doc in (
            ("inference_pool_average_kv_cache_utilization", "avg_kv", "Average KV-cache use of ready pods"),
            ("inference_pool_average_queue_size", "avg_queue", "Average waiting requests of ready pods"),
            ("inference_pool_ready_pods", "ready", "Ready pods in the pool view"),
        ):
            g = GaugeMetricFamily(name, doc, labels=["name"])
            g.add_metric([self.pool], s[key])
            yield g
        g = GaugeMetricFamily(
            "infergate_picker_view_endpoints", "Endpoints in the pool view", labels=["pool"]
        )
        g.add_metric([self.pool], s["endpoints"])
        yield g
        g = GaugeMetricFamily(
            "infergate_picker_view_max_age_seconds", "Age of the oldest endpoint metrics", labels=["pool"]
        )
        g.add_metric([self.pool], s["max_age"])
        yield g
        g = GaugeMetricFamily(
            "infergate_picker_view_stale_endpoints",
            "Endpoints whose metrics are older than --metrics-staleness-threshold",
            labels=["pool"],
        )
        g.add_metric([self.pool], s["stale"])
        yield g
        cm = CounterMetricFamily(
            "infergate_picker_view_updates_dropped", "Endpoint updates dropped", labels=["pool", "reason"]
        )
        for reason, n in c["dropped"].items():
            cm.add_metric([self.pool, reason], n)
        yield cm
        cm = CounterMetricFamily(
            "infergate_picker_view_decode_failures", "Endpoint payloads that did not decode", labels=["pool"]
        )
        cm.add_metric([self.pool], c["decode_failures"])
        yield cm
        cm = CounterMetricFamily(
            "infergate_picker_view_updates_accepted", "Endpoint updates applied", labels=["pool"]
        )
        cm.add_metric([self.pool], c["accepted"])
        yield cm


class PickerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        mt = ["model_name", "target_model_name"]
        self.requests = Counter("inference_model_request", "Requests routed", mt, registry=r)
        self.errors = Counter(
            "inference_model_request_error", "Requests that failed", [*mt, "error_code"], registry=r
        )
        self.duration = Histogram(
            "inference_model_request_duration_seconds", "End-to-end latency", mt, buckets=_LATENCY, registry=r
        )
        self.input_tokens = Histogram(
            "inference_model_input_tokens", "Prompt tokens per request", mt, buckets=_TOKENS, registry=r
        )
        self.output_tokens = Histogram(
            "inference_model_output_tokens", "Output tokens per request", mt, buckets=_TOKENS, registry=r
        )
        self.ntpot = Histogram(
            "inference_model_normalized_time_per_output_token_seconds",
            "Latency divided by output tokens",
            mt,
            buckets=_NTPOT,
            registry=r,
        )
        self.ttft = Histogram(
            "infergate_picker_ttft_seconds",
            "Time to the first response body byte",
            mt,
            buckets=_LATENCY,
            registry=r,
        )
        self.running = Gauge(
            "inference_model_running_requests", "In-flight requests", ["model_name"], registry=r
        )
        self.scheduler_e2e = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Time the scheduler takes per decision",
            buckets=_SCHED,
            registry=r,
        )
        self.picker_cpu = Histogram(
            "infergate_picker_request_handling_seconds",
            "Wall time the picker spends on one request's headers+body before answering",
            buckets=_SCHED,
            registry=r,
        )
        self._children: dict[tuple[str, str], _ModelChildren] = {}
        self._running: dict[str, Gauge] = {}

    def add_pool_collector(
        self, pool: str, stats: Callable[[], dict[str, float]], counters: Callable[[], dict]
    ) -> None:
        self.registry.register(_PoolCollector(pool, stats, counters))

    def model(self, model: str, target: str) -> _ModelChildren:
        key = (model, target)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = _ModelChildren(self, model, target)
        return c

    def running_of(self, model: str) -> Gauge:
        g = self._running.get(model)
        if g is None:
            g = self._running[model] = self.running.labels(model)
        return g

    def error(self, model: str, target: str, code: int | str) -> None:
        self.errors.labels(model, target, str(code)).inc()
