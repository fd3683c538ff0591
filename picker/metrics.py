"""Prometheus metrics under today's upstream names (so existing dashboards work) plus InferGate's own.

Each request-level measurement is exposed under three families:

* ``inference_model_*`` (GIE v1alpha2 era; the bundled Grafana dashboard reads these),
* ``inference_objective_*`` (GIE v1.1+ renamed them), both labelled
  ``{model_name, target_model_name}``,
* ``llm_d_epp_request_*`` (llm-d-router's canonical prefix), labelled
  ``{model_name, target_model_name, fairness_id, priority}``.

It is recorded once, under llm-d's names; GIE's are sums of those over ``fairness_id``
and ``priority``, computed at scrape time (:class:`_GieCollector`).

Label values that come from client input (model names, rewrite targets, fairness ids)
are bounded by :class:`~.metric_labels.LabelCap`: a model name is a label value only if
it is configured or a pod of the pool serves it; a fairness id only among the first
``fairness_admit`` (100) seen; every label at most 1,000 values of at most 128
characters; anything else reads ``other``. So the page is bounded by the configuration,
never by what clients send (one label set of the request families is ~400 lines).

One :class:`PickerMetrics` per picker instance, on its own ``CollectorRegistry``. Label
children are cached per bounded label set, so the hot path does a dict lookup, not a
``labels()`` call. Pool gauges are computed from the view at scrape time, costing the
request path nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.tables import TableCollector

from .metric_labels import LABEL_LIMIT, LABEL_MAX_LEN, OTHER, LabelCap, LabelCapCollector, served_models
from .protocol import DEFAULT_FAIRNESS_ID

__all__ = ["LABEL_LIMIT", "LABEL_MAX_LEN", "OTHER", "LabelCap", "PickerMetrics", "RequestLabels"]

FAIRNESS_ADMIT = 100  # fairness ids admitted first come (upstream admits 1,000; see below)

# Label sets per family before everything folds into "other": a backstop behind the
# per-label caps (whose product is already bounded by the configuration).
CHILDREN_LIMIT = 2_000

# fmt: off
_LATENCY = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45,
            60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600)
_TOKENS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072, 262144,
           524288, 1048576)
_NTPOT = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8,
          1, 1.5, 2, 3, 4.5, 6, 12, 18, 24, 30, 36, 48, 60, 120, 180, 240, 300, 360, 480, 600)
_SCHED = (0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
# fmt: on


class RequestLabels:
    """The label children of one (model, target, fairness id, priority)."""

    __slots__ = (
        "duration",
        "input_tokens",
        "ntpot",
        "output_tokens",
        "requests",
        "running",
        "ttft",
        "values",
    )

    def __init__(self, m: PickerMetrics, model: str, target: str, fairness: str, priority: str) -> None:
        full = (model, target, fairness, priority)
        self.values = full
        self.requests = m.requests.labels(*full)
        self.duration = m.duration.labels(*full)
        self.input_tokens = m.input_tokens.labels(*full)
        self.output_tokens = m.output_tokens.labels(*full)
        self.ntpot = m.ntpot.labels(*full)
        self.running = m.running.labels(*full)
        self.ttft = m.ttft.labels(model, target)


# llm-d's request family -> GIE's suffix (after inference_model_ / inference_objective_).
_GIE_SUFFIX = {
    "llm_d_epp_request": "request",
    "llm_d_epp_request_error": "request_error",
    "llm_d_epp_request_duration_seconds": "request_duration_seconds",
    "llm_d_epp_request_input_tokens": "input_tokens",
    "llm_d_epp_request_output_tokens": "output_tokens",
    "llm_d_epp_request_ntpot_seconds": "normalized_time_per_output_token_seconds",
    "llm_d_epp_request_running": "running_requests",
}
_DROP = ("fairness_id", "priority")


class _GieCollector(Collector):
    """GIE's names, summed over llm-d's finer labels at scrape time.

    The request path records each measurement once, under ``llm_d_epp_*``; counters,
    histograms and the in-flight gauge are sums, so ``inference_model_*`` and
    ``inference_objective_*`` (labels without ``fairness_id`` and ``priority``; the
    running gauge by ``model_name`` only) are those series added up. Scrape cost grows
    with the (bounded) number of series; the request path pays nothing for the copies.
    """

    def __init__(self, m: PickerMetrics) -> None:
        self.sources = (m.requests, m.errors, m.duration, m.input_tokens, m.output_tokens, m.ntpot, m.running)
        self.scheduler = m.scheduler_e2e

    def collect(self):
        for source in self.sources:
            for fam in source.collect():
                yield from self._derive(fam)
        for fam in self.scheduler.collect():
            out = HistogramMetricFamily(
                "inference_extension_scheduler_e2e_duration_seconds", fam.documentation
            )
            out.samples = [
                s._replace(name=s.name.replace(fam.name, out.name, 1))
                for s in fam.samples
                if not s.name.endswith("_created")
            ]
            yield out

    def _derive(self, fam):
        suffix = _GIE_SUFFIX[fam.name]
        running = fam.type == "gauge"
        sums: dict[tuple, float] = {}
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            if running:
                key = (s.name, (("model_name", s.labels["model_name"]),))
            else:
                key = (s.name, tuple((k, v) for k, v in s.labels.items() if k not in _DROP))
            sums[key] = sums.get(key, 0.0) + s.value
        for prefix in ("inference_model_", "inference_objective_"):
            name = prefix + suffix
            out = Metric(name, fam.documentation, fam.type)
            for (sample_name, labels), value in sums.items():
                out.add_sample(name + sample_name[len(fam.name) :], dict(labels), value)
            yield out


def _gauge(
    name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, v in rows:
        g.add_metric(values, v)
    return g


def _accelerator_families(pool: str, eps: list[Any]):
    """Each endpoint's accelerator and price (from its snapshot), and the pool's totals per accelerator.

    Label values come from the collector, which accepts only label-like names; the series
    are per endpoint, so they are bounded by the pool's size like the queue series above.
    """
    per_accel: dict[str, list[float]] = {}
    info, cost = [], []
    for e in eps:
        snap = e.snapshot
        accel = getattr(snap, "accelerator", "") or "unknown"
        price = float(getattr(snap, "cost_per_hour", 0.0) or 0.0)
        info.append(([pool, e.address, accel], 1.0))
        cost.append(([pool, e.address], price))
        agg = per_accel.setdefault(accel, [0.0, 0.0])
        if snap.ready and snap.healthy:
            agg[0] += 1
            agg[1] += price
    yield _gauge(
        "infergate_pool_endpoint_accelerator_info",
        "The accelerator each endpoint runs on (its pod label/annotation or the targets file)",
        ["name", "model_server_endpoint", "accelerator"],
        info,
    )
    yield _gauge(
        "infergate_pool_endpoint_cost_per_hour",
        "Each endpoint's price per hour (0 = unknown)",
        ["name", "model_server_endpoint"],
        cost,
    )
    yield _gauge(
        "infergate_pool_ready_endpoints_by_accelerator",
        "Ready endpoints per accelerator",
        ["name", "accelerator"],
        [([pool, a], v[0]) for a, v in per_accel.items()],
    )
    yield _gauge(
        "infergate_pool_cost_per_hour",
        "Price per hour of the ready endpoints, per accelerator",
        ["name", "accelerator"],
        [([pool, a], v[1]) for a, v in per_accel.items()],
    )


class _PoolCollector(Collector):
    """Reads the view's stats at scrape time."""

    def __init__(
        self,
        pool: str,
        stats: Callable[[], dict[str, float]],
        counters: Callable[[], dict],
        endpoints: Callable[[], list[Any]] | None = None,
    ) -> None:
        self.pool = pool
        self.stats = stats
        self.counters = counters
        self.endpoints = endpoints

    def collect(self):
        s = self.stats()
        c = self.counters()
        pool = [self.pool]
        for names, key, doc in (
            (
                ("inference_pool_average_kv_cache_utilization", "llm_d_epp_average_kv_cache_utilization"),
                "avg_kv",
                "Average KV-cache use of ready pods",
            ),
            (
                ("inference_pool_average_queue_size", "llm_d_epp_average_queue_size"),
                "avg_queue",
                "Average waiting requests of ready pods",
            ),
            (
                ("inference_pool_ready_pods", "llm_d_epp_ready_endpoints"),
                "ready",
                "Ready pods in the pool view",
            ),
        ):
            for name in names:
                yield _gauge(name, doc, ["name"], [(pool, s[key])])
        if self.endpoints is not None:
            eps = self.endpoints()
            yield _gauge(
                "inference_pool_per_pod_queue_size",
                "Waiting requests per pod",
                ["name", "model_server_pod"],
                [([self.pool, e.snapshot.pod], e.snapshot.waiting) for e in eps],
            )
            yield _gauge(
                "llm_d_epp_per_endpoint_queue_size",
                "Waiting requests per endpoint (ip:port)",
                ["name", "model_server_endpoint"],
                [([self.pool, e.address], e.snapshot.waiting) for e in eps],
            )
            yield from _accelerator_families(self.pool, eps)
        yield _gauge(
            "infergate_picker_view_endpoints",
            "Endpoints in the pool view",
            ["pool"],
            [(pool, s["endpoints"])],
        )
        yield _gauge(
            "infergate_picker_view_max_age_seconds",
            "Age of the oldest endpoint metrics",
            ["pool"],
            [(pool, s["max_age"])],
        )
        yield _gauge(
            "infergate_picker_view_stale_endpoints",
            "Endpoints whose metrics are older than --metrics-staleness-threshold",
            ["pool"],
            [(pool, s["stale"])],
        )
        cm = CounterMetricFamily(
            "infergate_picker_view_updates_dropped", "Endpoint updates dropped", labels=["pool", "reason"]
        )
        for reason, n in c["dropped"].items():
            cm.add_metric([self.pool, reason], n)
        yield cm
        cm = CounterMetricFamily(
            "infergate_picker_view_decode_failures", "Endpoint payloads that did not decode", labels=["pool"]
        )
        cm.add_metric(pool, c["decode_failures"])
        yield cm
        cm = CounterMetricFamily(
            "infergate_picker_view_updates_accepted", "Endpoint updates applied", labels=["pool"]
        )
        cm.add_metric(pool, c["accepted"])
        yield cm


class PickerMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        model_admit: int = 0,
        fairness_admit: int = FAIRNESS_ADMIT,
    ) -> None:
        self.registry = r = registry or CollectorRegistry()
        mt = ["model_name", "target_model_name"]
        full = [*mt, "fairness_id", "priority"]
        # Recorded once, under llm-d-router's names; GIE's are derived at scrape time.
        self.requests = Counter("llm_d_epp_request", "Requests routed", full, registry=None)
        self.errors = Counter(
            "llm_d_epp_request_error", "Requests that failed", [*full, "error_code"], registry=None
        )
        self.duration = Histogram(
            "llm_d_epp_request_duration_seconds", "End-to-end latency", full, buckets=_LATENCY, registry=None
        )
        self.input_tokens = Histogram(
            "llm_d_epp_request_input_tokens",
            "Prompt tokens per request",
            full,
            buckets=_TOKENS,
            registry=None,
        )
        self.output_tokens = Histogram(
            "llm_d_epp_request_output_tokens",
            "Output tokens per request",
            full,
            buckets=_TOKENS,
            registry=None,
        )
        self.ntpot = Histogram(
            "llm_d_epp_request_ntpot_seconds",
            "Latency divided by output tokens",
            full,
            buckets=_NTPOT,
            registry=None,
        )
        self.running = Gauge("llm_d_epp_request_running", "In-flight requests", full, registry=None)
        self.scheduler_e2e = Histogram(
            "llm_d_epp_scheduler_e2e_duration_seconds",
            "Time the scheduler takes per decision",
            buckets=_SCHED,
            registry=None,
        )
        for own in (
            self.requests,
            self.errors,
            self.duration,
            self.input_tokens,
            self.output_tokens,
            self.ntpot,
            self.running,
            self.scheduler_e2e,
        ):
            r.register(own)
        r.register(_GieCollector(self))
        self.ttft = Histogram(
            "infergate_picker_ttft_seconds",
            "Time to the first response body byte",
            mt,
            buckets=_LATENCY,
            registry=r,
        )
        self.picker_cpu = Histogram(
            "infergate_picker_request_handling_seconds",
            "Wall time the picker spends on one request's headers+body before answering",
            buckets=_SCHED,
            registry=r,
        )
        # model_name and target_model_name share one cap, as upstream's do. Unconfigured
        # names are vouched for by the pool's pods once add_pool_collector gives the view.
        self.model_cap = LabelCap(admit=model_admit)
        self.fairness_cap = LabelCap(admit=fairness_admit)
        self.fairness_cap.set_known([DEFAULT_FAIRNESS_ID])
        self.priority_cap = LabelCap(admit=LABEL_LIMIT)  # priorities come from the configuration
        self._children: dict[tuple[str, str, str, str], RequestLabels] = {}
        self.children_folded = 0
        r.register(
            LabelCapCollector(
                "infergate_picker",
                {
                    "model_name": self.model_cap,
                    "fairness_id": self.fairness_cap,
                    "priority": self.priority_cap,
                },
            )
        )

    def add_pool_collector(
        self,
        pool: str,
        stats: Callable[[], dict[str, float]],
        counters: Callable[[], dict],
        endpoints: Callable[[], list[Any]] | None = None,
    ) -> None:
        self.registry.register(_PoolCollector(pool, stats, counters, endpoints))
        if endpoints is not None and self.model_cap.vouch is None:
            self.model_cap.vouch = served_models(endpoints)

    def add_tables(self, state: Any, director: Any) -> None:
        """Export the sizes of the pool state's bounded tables and the director's open requests."""
        inflight, prefix = state.inflight, state.prefix
        none = lambda: 0  # noqa: E731
        self.registry.register(
            TableCollector(
                "infergate_picker",
                {
                    "inflight_requests": (
                        lambda: len(inflight),
                        inflight.max_entries,
                        lambda: inflight.evicted,
                    ),
                    "inflight_endpoints": (
                        lambda: inflight.addresses,
                        inflight.max_addresses,
                        lambda: inflight.refused,
                    ),
                    "prefix_hashes": (
                        lambda: prefix.hashes,
                        prefix.max_addresses * prefix.max_capacity_blocks,
                        none,
                    ),
                    "prefix_endpoints": (
                        lambda: prefix.addresses,
                        prefix.max_addresses,
                        lambda: prefix.refused,
                    ),
                    # one per open ext_proc stream: bounded by Envoy's concurrency, not here
                    "open_requests": (lambda: len(director.inflight), 0, none),
                    "label_sets": (lambda: len(self._children), CHILDREN_LIMIT, lambda: self.children_folded),
                },
            )
        )

    def set_known_models(self, names: Iterable[str]) -> None:
        """The configured model names: they always label as themselves."""
        self.model_cap.set_known(names)

    # -- the request path --------------------------------------------------------------------
    def _bound(self, model: str, target: str, fairness_id: str, priority: int) -> tuple[str, str, str, str]:
        cap = self.model_cap
        return (
            cap(model),
            cap(target),
            self.fairness_cap(fairness_id or DEFAULT_FAIRNESS_ID),
            self.priority_cap(str(priority)),
        )

    def labels(self, model: str, target: str, fairness_id: str = "", priority: int = 0) -> RequestLabels:
        """The (cached) children for one request's labels, bounded."""
        key = self._bound(model, target, fairness_id, priority)
        c = self._children.get(key)
        if c is None:
            if len(self._children) >= CHILDREN_LIMIT:
                self.children_folded += 1
                key = (OTHER, OTHER, OTHER, OTHER)
                c = self._children.get(key)
            if c is None:
                c = self._children[key] = RequestLabels(self, *key)
        return c

    def assigned(self, lbl: RequestLabels) -> None:
        lbl.requests.inc()
        lbl.running.inc()

    def completed(
        self,
        lbl: RequestLabels,
        status: int,
        latency: float,
        input_tokens: int,
        output_tokens: int,
        ttft: float,
    ) -> None:
        lbl.running.dec()
        if status >= 400 or status == 0:
            self._error(lbl.values, status)
            return
        lbl.duration.observe(latency)
        lbl.input_tokens.observe(input_tokens)
        if output_tokens > 0:
            lbl.output_tokens.observe(output_tokens)
            lbl.ntpot.observe(latency / output_tokens)
        if ttft:
            lbl.ttft.observe(ttft)

    def decision(self, seconds: float) -> None:
        self.scheduler_e2e.observe(seconds)

    def error(
        self, model: str, target: str, code: int | str, fairness_id: str = "", priority: int = 0
    ) -> None:
        self._error(self._bound(model, target, fairness_id, priority), code)

    def _error(self, values: tuple[str, str, str, str], code: int | str) -> None:
        self.errors.labels(*values, str(code)).inc()
