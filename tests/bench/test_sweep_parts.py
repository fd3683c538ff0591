"""The sweep's pieces without simulating: the point lists, the results JSON, the replicas verdict."""

from __future__ import annotations

import math

from bench.des import DESConfig, PointResult, WorkloadSpec
from bench.sweep import main
from bench.sweep.cli import parser
from bench.sweep.experiments import replica_jobs, seed_jobs
from bench.sweep.formatting import fmt_t, pct, ratio
from bench.sweep.provenance import make_meta
from bench.sweep.results import load_results, save_results


def quick_args(*extra: str):
    args = parser().parse_args(["--quick", *extra])
    args.duration, args.warmup, args.replica_seeds, args.profiles_data = 15.0, 5.0, 1, None
    return args


def test_quick_seed_experiment_runs_every_policy_on_the_quick_points():
    jobs = seed_jobs(quick_args())
    points = {(s, c.qps) for s, c in jobs}
    assert points == {
        ("sharegpt", 100),
        ("sharegpt", 300),
        ("sharegpt", 600),
        ("sharegpt-shed", 300),
        ("sharegpt-shed", 600),
        ("prefix", 30),
        ("prefix", 80),
        ("lora", 100),
        ("lora", 300),
    }
    assert len(jobs) == len(points) * 6  # every policy, the oracle included
    assert {c.criticality for s, c in jobs if s == "sharegpt-shed"} == {"Sheddable"}
    assert {c.criticality for s, c in jobs if s != "sharegpt-shed"} == {"Standard"}
    assert {c.workload.name for s, c in jobs if s == "prefix"} == {"shared-prefix"}


def test_suites_and_points_flags_narrow_the_seed_experiment():
    jobs = seed_jobs(quick_args("--suites", "lora", "--points", "50", "--policies", "default"))
    assert [(s, c.qps, c.policy) for s, c in jobs] == [("lora", 50.0, "default")]


def test_quick_replicas_experiment_keeps_the_high_point_and_leaves_out_two_replicas():
    jobs = replica_jobs(quick_args())
    assert {(s, c.qps) for s, c in jobs} == {("sharegpt", 250), ("prefix", 60)}
    configs = {(c.picker_replicas, c.shared_view, c.spread) for _, c in jobs}
    assert configs == {
        (1, True, "round-robin"),
        (4, False, "round-robin"),
        (4, True, "round-robin"),
        (4, True, "random"),
    }
    assert {c.policy for _, c in jobs} == {"default", "gie-v1"}
    assert len(jobs) == 2 * 4 * 2


def test_results_json_round_trips_configs_and_figures(tmp_path):
    cfg = DESConfig(policy="gie-v1", qps=250.0, workload=WorkloadSpec("sharegpt"), picker_replicas=4, seed=3)
    res = PointResult("gie-v1", 250.0, "sharegpt", picker_replicas=4, served=10, ttft_p90=0.25, cpu_s=1.5)
    meta = make_meta(quick_args(), "infergate-bench sweep --quick", 12.0, "commit x")
    save_results(tmp_path / "replicas.json", [("sharegpt", cfg, res)], meta)
    meta2, rows = load_results(tmp_path / "replicas.json")
    assert meta2 == meta
    [(suite, cfg2, res2)] = rows
    assert suite == "sharegpt" and cfg2.label() == cfg.label()
    assert (res2.served, res2.ttft_p90, res2.cpu_s) == (10, 0.25, 1.5)
    assert math.isnan(res2.ntpot_p90)


def _point(n: int, seed: int, ttft: float) -> tuple[str, DESConfig, PointResult]:
    cfg = DESConfig(
        policy="default", qps=250.0, workload=WorkloadSpec("sharegpt"), picker_replicas=n, seed=seed
    )
    res = PointResult(
        "default", 250.0, "sharegpt", picker_replicas=n, ttft_p90=ttft, ntpot_p90=0.02, e2e_p90=5.0
    )
    return "sharegpt", cfg, res


def test_render_rebuilds_the_replicas_report_and_its_verdict_from_json(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    # 4 shared replicas against one: TTFT medians 0.103 vs 0.100 (within 5%), per-seed ratios 1.00-1.06
    points = [_point(1, 1, 0.100), _point(1, 2, 0.100), _point(4, 1, 0.100), _point(4, 2, 0.106)]
    args = quick_args()
    args.replica_seeds = 2
    save_results(src / "replicas.json", points, make_meta(args, "infergate-bench sweep x", 3.0, "commit y"))
    assert main(["--render", str(src), "--out", str(out)]) == 0
    report = (out / "replicas.md").read_text()
    verdict = [line for line in report.splitlines() if "4 shared vs 1" in line]
    assert verdict == [
        "- sharegpt @ 250 QPS, default: 4 shared vs 1 = p90 NTPOT 1.000x (runs 1.00-1.00), "
        "p90 TTFT 1.030x (runs 1.00-1.06) -> **within 5%**"
    ]
    assert "Command: `infergate-bench sweep x`" in report and "Scheduler: commit y." in report
    assert main(["--render", str(src), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "replicas.md").read_text() == report


def test_render_without_results_fails(tmp_path):
    assert main(["--render", str(tmp_path), "--out", str(tmp_path / "out")]) == 1


def test_formats_keep_units_and_skip_missing_figures():
    assert (fmt_t(0.0123), fmt_t(12.34), fmt_t(math.nan)) == ("12 ms", "12.3 s", "n/a")
    assert math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(math.nan, 1.0))
    assert (pct(1.1, 1.0), pct(math.nan, 1.0)) == ("+10.0%", "n/a")
