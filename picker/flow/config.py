"""Flow-control settings: the ``flow_control`` block of a scheduling profile, plus flag overrides.

A profile turns flow control on by carrying the block (``enabled: true`` is implied);
``--flow-control`` / ``INFERGATE_FLOW_CONTROL`` turns it on or off for whatever profile
runs, and the other ``--flow-control-*`` flags override single fields. Every field has
upstream's default where upstream has one (TTL 60 s, 5,000 requests per band, utilization
limits 5 / 0.8 / 200 ms, LAS half-life 60 s). One is ours: ``mixed_queue_depth`` (1), the
utilization detector's queue depth while several priority bands or flows are active (measured in
bench/results/flow-control.md; set it to ``queue_depth`` for upstream's behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from picker.scheduling.params import ConfigError, Params

__all__ = ["DETECTORS", "FAIRNESS", "ORDERING", "FlowConfig", "parse_flow_config"]

FAIRNESS = ("round-robin", "least-attained-service", "global-strict")
ORDERING = ("fcfs", "edf")
DETECTORS = ("utilization", "concurrency")


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """One profile's flow-control settings (``enabled`` False: the director admits as before)."""

    enabled: bool = False
    fairness: str = "round-robin"
    ordering: str = "fcfs"
    ttl_s: float = 60.0  # a queued request older than this gets 429 rejected-ttl-expired
    # With no ready endpoint in the pool, a request waits up to this long (scale from zero);
    # 0: 503 at once. Capped by ttl_s.
    scale_from_zero_ttl_s: float = 60.0
    max_requests_per_band: int = 5000
    max_bytes_per_band: int = 1 << 30
    max_flows_per_band: int = 1000  # fairness ids beyond fold into one overflow flow
    detector: str = "utilization"
    queue_depth: int = 5  # utilization: a pod with more waiting requests is saturated
    # utilization, band-aware: while several priority bands (or flows) are active, a pod with
    # more waiting requests than this is saturated (its FCFS queue knows neither: the backlog
    # stays in the picker, in band and fairness order). Equal to queue_depth: upstream's gate.
    mixed_queue_depth: int = 1
    kv_cache: float = 0.8  # utilization: a pod over this KV use is saturated
    staleness_ms: float = 200.0  # utilization: older metrics count as saturated
    max_requests_per_pod: int = 0  # concurrency: requests in flight per pod (0: no limit)
    max_tokens_per_pod: int = 0  # concurrency: tokens in flight per pod (0: no limit)
    las_half_life_s: float = 60.0
    las_output_weight: float = 2.0
    tick_s: float = 0.02  # dispatch re-check period while something waits
    pool_wide: bool = True  # share limits and fairness with the other replicas over NATS
    publish_interval_s: float = 0.1  # pool-wide: how often a replica publishes its demand
    publish_on_rise: bool = True  # pool-wide: publish at once when the top waiting priority rises
    extra: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, **kw: Any) -> FlowConfig:
        """A copy with the given fields (None values ignored): the CLI flags' layer."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def parse_flow_config(raw: Any, where: str) -> FlowConfig:
    """Read a profile's ``flow_control`` mapping; absent -> disabled. Unknown fields fail."""
    if raw is None:
        return FlowConfig()
    if raw is True:
        return FlowConfig(enabled=True)
    p = Params(raw, where)
    fairness = p.string("fairness", "round-robin")
    if fairness not in FAIRNESS:
        raise ConfigError(p.field("fairness"), f"must be one of {', '.join(FAIRNESS)}, got {fairness!r}")
    ordering = p.string("ordering", "fcfs")
    if ordering not in ORDERING:
        raise ConfigError(p.field("ordering"), f"must be one of {', '.join(ORDERING)}, got {ordering!r}")
    det = Params(p.raw("detector"), p.field("detector"))
    kind = det.string("type", "utilization")
    if kind not in DETECTORS:
        raise ConfigError(det.field("type"), f"must be one of {', '.join(DETECTORS)}, got {kind!r}")
    cfg = FlowConfig(
        enabled=p.boolean("enabled", True),
        fairness=fairness,
        ordering=ordering,
        ttl_s=p.number("ttl_s", 60.0, lo=0.001),
        scale_from_zero_ttl_s=p.number("scale_from_zero_ttl_s", 60.0, lo=0.0),
        max_requests_per_band=p.integer("max_requests_per_band", 5000, lo=1),
        max_bytes_per_band=p.integer("max_bytes_per_band", 1 << 30, lo=1),
        max_flows_per_band=p.integer("max_flows_per_band", 1000, lo=1),
        detector=kind,
        queue_depth=det.integer("queue_depth", 5, lo=0),
        mixed_queue_depth=det.integer("mixed_queue_depth", 1, lo=0),
        kv_cache=det.number("kv_cache", 0.8, lo=0.0, hi=1.0),
        staleness_ms=det.number("staleness_ms", 200.0, lo=0.0),
        max_requests_per_pod=det.integer("max_requests_per_pod", 0, lo=0),
        max_tokens_per_pod=det.integer("max_tokens_per_pod", 0, lo=0),
        las_half_life_s=p.number("las_half_life_s", 60.0, lo=0.001),
        las_output_weight=p.number("las_output_weight", 2.0, lo=0.0),
        tick_s=p.number("tick_ms", 20.0, lo=1.0) / 1000.0,
        pool_wide=p.boolean("pool_wide", True),
        publish_interval_s=p.number("publish_interval_ms", 100.0, lo=5.0) / 1000.0,
        publish_on_rise=p.boolean("publish_on_rise", True),
    )
    det.done()
    p.done()
    if cfg.detector == "concurrency" and not (cfg.max_requests_per_pod or cfg.max_tokens_per_pod):
        raise ConfigError(
            f"{where}.detector", "the concurrency detector needs max_requests_per_pod or max_tokens_per_pod"
        )
    return cfg
