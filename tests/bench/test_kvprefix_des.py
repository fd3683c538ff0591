"""The precise-prefix experiment's pieces: its points, its report, and the DES's KV events path."""

from __future__ import annotations

import math

from bench.des import DESConfig, PointResult, run_point
from bench.des.cluster import Cluster
from bench.sweep.cli import parser
from bench.sweep.precise_prefix import LLMD, POLICIES, jobs, report


def quick_args(*extra: str):
    args = parser().parse_args(["--experiment", "precise-prefix", "--quick", *extra])
    args.duration, args.warmup, args.replica_seeds, args.profiles_data = 15.0, 5.0, 1, None
    return args


def test_quick_points_cover_both_workloads_and_every_policy():
    js = jobs(quick_args())
    assert {(s, c.qps) for s, c in js} == {
        ("llm-d", 80),
        ("llm-d", 160),
        ("prefix", 80),
        ("prefix", 120),
        ("llm-d-4r", 160),
    }
    assert {c.policy for _s, c in js} == set(POLICIES) and len(js) == 4 * len(POLICIES) + 2
    assert {(c.picker_replicas, c.shared_view) for s, c in js if s == "llm-d-4r"} == {(4, False)}
    # the llm-d-like workload asks for about 75% of the pool's KV in shared contexts
    pool_blocks = 10 * DESConfig().engine.num_gpu_blocks
    demand = LLMD.prefix_groups * (LLMD.system_tokens // 16)
    assert 0.7 < demand / pool_blocks < 0.8
    # a full run: every point once, each suite's highest load with TOP_SEEDS seeds
    full = quick_args()
    full.quick, full.replica_seeds = False, 5
    seeds = {(s, c.qps, c.policy): set() for s, c in jobs(full)}
    for s, c in jobs(full):
        seeds[(s, c.qps, c.policy)].add(c.seed)
    assert seeds[("llm-d", 160, "precise-prefix")] == {1, 2, 3} == seeds[("prefix", 120, "oracle")]
    assert seeds[("llm-d", 40, "default")] == {1} == seeds[("llm-d", 160, "random")]
    assert len(seeds) == 7 * len(POLICIES) + 4


def test_report_states_each_goal():
    def r(pol, ttft, tok):
        return PointResult(
            pol, 80, "shared-prefix", ttft_p90=ttft, ttft_p50=ttft / 2, tok_per_min=tok, prefix_hit_rate=0.5
        )

    res = [
        ("llm-d", DESConfig(policy=p, qps=80), r(p, t, k))
        for p, t, k in (("default", 2.0, 100.0), ("precise-prefix", 0.9, 110.0), ("oracle", 0.8, 120.0))
    ]
    text = report(res, {"command": "c", "scheduler": "s", "machine": "m", "wall_s": 1.0})
    assert "goal <= 0.5x: met" in text and "goal not below: met" in text and "goal <= 1.5x: met" in text
    res[1] = ("llm-d", DESConfig(policy="precise-prefix", qps=80), r("precise-prefix", 1.5, 90.0))
    text = report(res, {"command": "c", "scheduler": "s", "machine": "m", "wall_s": 1.0})
    assert "goal <= 0.5x: missed" in text and "goal not below: missed" in text
    # seeds of one point: the median of each figure, each seed's p90 listed; a cut run says so
    res += [
        ("llm-d", DESConfig(policy="precise-prefix", qps=80, seed=s), r("precise-prefix", t, 90.0))
        for s, t in ((2, 0.5), (3, 0.6))
    ]
    meta = {
        "command": "c",
        "scheduler": "s",
        "machine": "m",
        "wall_s": 1.0,
        "points_done": 5,
        "points_total": 9,
    }
    text = report(res, meta)
    assert "| precise-prefix | 600 ms |" in text and "precise-prefix: 1.5 s, 500 ms, 600 ms" in text
    assert "PARTIAL: 5 of 9 points" in text and "goal <= 0.5x: met" in text  # 0.6 s of 2.0 s


def test_des_precise_path_routes_from_events_and_beats_prefix_blind_routing():
    cfg = DESConfig(
        policy="precise-prefix", qps=20, workload=LLMD, duration_s=2, warmup_s=2, replicas=3, seed=3
    )
    c = Cluster(cfg)
    res = c.run()
    assert res.served > 0 and c.kv is not None
    routed = c.kv.routed()
    assert routed["precise"] > 0 and routed["approximate"] == 0  # every pod's events flowed
    assert all(idx.size() > 0 for idx in c.kv.indexes)
    blind = run_point(
        DESConfig(policy="load-only", qps=20, workload=LLMD, duration_s=2, warmup_s=2, replicas=3, seed=3)
    )
    assert not math.isnan(res.prefix_hit_rate) and res.prefix_hit_rate > blind.prefix_hit_rate
