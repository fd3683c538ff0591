"""Prometheus families of the latency predictors attached to a pool state (read at scrape time)."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .predictor import LatencyPredictor

__all__ = ["LatencyCollector", "register_latency_metrics"]


class LatencyCollector(Collector):
    def __init__(self, pool: str, state: Any) -> None:
        self.pool = pool
        self.state = state

    def predictors(self) -> list[LatencyPredictor]:
        return [o for o in getattr(self.state, "observers", []) if isinstance(o, LatencyPredictor)]

    def collect(self):
        preds = self.predictors()
        if not preds:
            return
        p = preds[0]
        pool = self.pool
        mape = GaugeMetricFamily(
            "infergate_latency_prediction_mape",
            "Mean absolute percentage error of recent predictions (last 2,000 per kind; 0.1 = 10%)",
            labels=["name", "kind", "accelerator"],
        )
        for kind in ("ttft", "tpot"):
            mape.add_metric([pool, kind, "all"], p.mape(kind))
            for accel in sorted(p.errors_by_accel):
                mape.add_metric([pool, kind, accel or "unknown"], p.mape(kind, accel))
        yield mape
        samples = CounterMetricFamily(
            "infergate_latency_training_samples", "Completions the latency model learnt from", labels=["name"]
        )
        samples.add_metric([pool], p.samples)
        yield samples
        ready = GaugeMetricFamily(
            "infergate_latency_model_ready", "1 once the model has enough samples to predict", labels=["name"]
        )
        ready.add_metric([pool], 1.0 if p.ready else 0.0)
        yield ready
        slo = CounterMetricFamily(
            "infergate_slo_requests",
            "Completed requests with an SLO, by objective and whether it was met (every replica's traffic)",
            labels=["name", "objective", "outcome"],
        )
        for (objective, outcome), n in sorted(p.slo_outcomes.items()):
            slo.add_metric([pool, objective, outcome], n)
        yield slo
        viol = CounterMetricFamily(
            "infergate_slo_predicted_violations",
            "Requests no endpoint was predicted to meet, by what happened (served: not sheddable; rejected)",
            labels=["name", "action"],
        )
        viol.add_metric([pool, "served"], p.predicted_violations)
        viol.add_metric([pool, "rejected"], p.rejected)
        yield viol


def register_latency_metrics(registry: CollectorRegistry, pool: str, state: Any) -> LatencyCollector:
    c = LatencyCollector(pool, state)
    registry.register(c)
    return c
