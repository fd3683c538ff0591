"""Mixed accelerator pools in the DES: each engine on its own accelerator profile (sim/accel.py).

:class:`HeteroCluster` is the seed experiment's :class:`~.cluster.Cluster` with one change of
hardware per endpoint: engine ``i`` runs ``pool[i]``'s step-time model and KV capacity, and
its snapshots carry the accelerator's name and price per hour, as the collector publishes
them from a pod label or the targets file. Everything else (workload, arrivals, the real
picker code, scraping, bus delays, measurement) is the base cluster's.

:func:`run_hetero_point` adds the figures of the heterogeneous experiment to the base
result: SLO attainment (TTFT and TPOT objectives, and both), cost per million output
tokens (the pool's price per hour over the measured span; and each pod's price over its
busy time, as if an idle pod cost nothing), and, for a profile that learns
latency, its prediction error (MAPE over its last 2,000 predictions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import msgspec

from sim.accel import AcceleratorProfile, profiles
from sim.engine import Engine
from sim.workloads import percentile

from .cluster import Cluster, DESConfig, PointResult

__all__ = ["HeteroConfig", "HeteroResult", "pool_capacity", "run_hetero_point"]


@dataclass
class HeteroConfig:
    """A DES point on a mixed pool: ``pool`` is one accelerator name per endpoint."""

    des: DESConfig
    pool: tuple[str, ...]
    slo_ttft_s: float = 0.5
    slo_tpot_s: float = 0.05


@dataclass
class HeteroResult:
    point: PointResult
    load: float = 0.0  # offered QPS / the pool's capacity
    slo_ttft: float = math.nan  # share of measured requests meeting each objective
    slo_tpot: float = math.nan
    slo_both: float = math.nan
    tpot_p90: float = math.nan
    cost_per_mtok: float = math.nan  # pool $/h x measured span / output tokens, per million
    # each pod's $/h x its busy time (steps running) / every output token of the run, per
    # million: what the tokens cost if an idle pod costs nothing (scaled to zero / down)
    busy_cost_per_mtok: float = math.nan
    mape_ttft: float = math.nan
    mape_tpot: float = math.nan
    served_by: dict[str, int] = field(default_factory=dict)  # requests per accelerator

    def as_dict(self) -> dict:
        d = asdict(self)
        d["point"] = self.point.as_dict()
        return d


class HeteroCluster(Cluster):
    def __init__(self, cfg: DESConfig, pool: tuple[str, ...], profs: dict[str, AcceleratorProfile]) -> None:
        if len(pool) != cfg.replicas:
            raise ValueError(f"pool has {len(pool)} accelerators for {cfg.replicas} replicas")
        self.accel_profiles = profs
        self.pool_names = pool
        super().__init__(cfg)
        # The base built identical engines; give each endpoint its own hardware. Only idle
        # snapshots were published so far (the first scrape corrects their KV capacity).
        self.accel_of = dict(zip(self.addresses, pool, strict=True))
        self.engines = {a: Engine(profs[self.accel_of[a]].engine_config(cfg.engine)) for a in self.addresses}
        self.served_by: dict[str, int] = {}
        self.tokens_all = 0  # output tokens of every request finished in the run

    def _snapshot(self, address: str, now: float):
        snap = super()._snapshot(address, now)
        accel_of = getattr(self, "accel_of", None)
        if accel_of is None:  # the base's start-up snapshots, before the engines are swapped
            return snap
        p = self.accel_profiles[accel_of[address]]
        return msgspec.structs.replace(snap, accelerator=p.name, cost_per_hour=p.cost_per_hour)

    def _finish(self, address: str, finished, now: float) -> None:
        for r in finished:
            self.tokens_all += r.max_tokens
            if r.ctx[2]:
                acc = self.accel_of[address]
                self.served_by[acc] = self.served_by.get(acc, 0) + 1
        super()._finish(address, finished, now)


def pool_capacity(pool: tuple[str, ...], per_accelerator: dict[str, float]) -> float:
    return sum(per_accelerator[a] for a in pool)


def run_hetero_point(job: tuple[HeteroConfig, float]) -> HeteroResult:
    """Simulate one point; ``job`` = (config, the pool's capacity in req/s)."""
    hc, capacity = job
    profs = profiles()
    cluster = HeteroCluster(hc.des, hc.pool, profs)
    res = cluster.run()
    recs = cluster.records
    out = HeteroResult(point=res, load=hc.des.qps / capacity if capacity else math.nan)
    if recs:
        ok_t = [r[0] <= hc.slo_ttft_s for r in recs]
        tpots = [(r[1] - r[0]) / (r[2] - 1) if r[2] > 1 else 0.0 for r in recs]
        ok_p = [t <= hc.slo_tpot_s for t in tpots]
        n = len(recs)
        out.slo_ttft = sum(ok_t) / n
        out.slo_tpot = sum(ok_p) / n
        out.slo_both = sum(a and b for a, b in zip(ok_t, ok_p, strict=True)) / n
        out.tpot_p90 = percentile(tpots, 90)
    span_h = (cluster.last_finish - hc.des.warmup_s) / 3600.0
    dollars = sum(profs[a].cost_per_hour for a in hc.pool) * span_h
    if res.output_tokens:
        out.cost_per_mtok = dollars / res.output_tokens * 1e6
    if cluster.tokens_all:
        busy = sum(profs[cluster.accel_of[a]].cost_per_hour * e.busy_time for a, e in cluster.engines.items())
        out.busy_cost_per_mtok = busy / 3600.0 / cluster.tokens_all * 1e6
    preds = [o for pk in cluster.pickers for o in getattr(pk.profile.state, "observers", [])]
    if preds:
        out.mape_ttft = sum(p.mape("ttft") for p in preds) / len(preds)
        out.mape_tpot = sum(p.mape("tpot") for p in preds) / len(preds)
    out.served_by = dict(sorted(cluster.served_by.items()))
    return out
