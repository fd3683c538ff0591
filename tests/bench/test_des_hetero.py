"""Mixed pools in the DES: each engine on its accelerator, snapshots labelled, the predictor learning."""

from __future__ import annotations

import argparse

from bench.des import DESConfig
from bench.des.hetero import HeteroCluster, HeteroConfig, run_hetero_point
from bench.sweep.hetero import POLICIES, POOL, jobs
from sim.accel import profiles


def test_engines_and_snapshots_follow_the_pool():
    pool = ("h100-80gb", "l40s-48gb")
    c = HeteroCluster(DESConfig(policy="gie-v1", qps=5, replicas=2), pool, profiles())
    caps = {a: c.engines[a].cfg.kv_capacity_tokens for a in c.addresses}
    assert sorted(caps.values()) == sorted(profiles()[n].kv_capacity_tokens for n in pool)
    snap = c._snapshot(c.addresses[1], 1.0)
    assert (snap.accelerator, snap.cost_per_hour) == ("l40s-48gb", profiles()["l40s-48gb"].cost_per_hour)


def test_predicted_latency_point_learns_and_reports():
    pool = ("h100-80gb", "a100-80gb", "l40s-48gb")
    cfg = DESConfig(policy="predicted-latency", qps=20, replicas=3, duration_s=6, warmup_s=2, seed=3)
    r = run_hetero_point((HeteroConfig(cfg, pool), 46.8))
    assert r.point.served > 50 and r.point.shed == 0
    assert 0 <= r.slo_both <= min(r.slo_ttft, r.slo_tpot) <= 1
    assert 0 < r.mape_ttft < 5 and 0 < r.mape_tpot < 5  # the predictor made and scored predictions
    assert sum(r.served_by.values()) == r.point.served and r.cost_per_mtok > 0 and r.busy_cost_per_mtok > 0
    base = run_hetero_point((HeteroConfig(DESConfig(policy="round-robin", **_same(cfg)), pool), 46.8))
    assert base.mape_ttft != base.mape_ttft  # NaN: no model in a baseline
    assert len(set(base.served_by)) == 3  # round-robin reaches every accelerator


def _same(cfg: DESConfig) -> dict:
    return {"qps": cfg.qps, "replicas": cfg.replicas, "duration_s": cfg.duration_s, "warmup_s": 2, "seed": 3}


def test_quick_points():
    args = argparse.Namespace(duration=15.0, warmup=5.0, seed=1, quick=True, policies=list(POLICIES))
    js = jobs(args, 187.3, {})
    assert len(js) == 3 * len(POLICIES) and all(j[0].pool == POOL for j in js)
    assert sorted({j[0].des.qps for j in js}) == [93.7, 149.8, 206.0]
