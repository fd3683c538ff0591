"""The replicas experiment: several seeds per point, medians in the report, the spread shown."""

from __future__ import annotations

import json
import math

import pytest

from bench.des import PointResult
from bench.sweep import main
from bench.sweep.replicas_report import median_result


def test_median_result_takes_each_figure_s_median_and_skips_missing_ones():
    runs = [
        PointResult("default", 30, "prefix", ttft_p90=t, ntpot_p90=n, prefix_hit_rate=h, e2e_p90=1.0)
        for t, n, h in [(0.05, 0.02, math.nan), (0.09, 0.03, 0.8), (0.06, 0.01, 0.9)]
    ]
    m = median_result(runs)
    assert (m.ttft_p90, m.ntpot_p90) == (0.06, 0.02)
    assert m.prefix_hit_rate == pytest.approx(0.85)
    assert m.policy == "default" and m.workload == "prefix"


def test_replicas_experiment_runs_every_seed_and_reports_medians(tmp_path):
    rc = main(
        [
            "--experiment",
            "replicas",
            "--quick",
            "--replica-seeds",
            "2",
            "--policies",
            "default",
            "--points",
            "40",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--prefix-groups",
            "32",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "replicas.json").read_text())
    assert data["meta"]["replica_seeds"] == 2
    seeds: dict[tuple, set[int]] = {}
    for p in data["points"]:
        c = p["config"]
        seeds.setdefault((p["suite"], c["picker_replicas"], c["shared_view"], c["spread"]), set()).add(
            c["seed"]
        )
    assert len(seeds) == 8  # 2 workloads x 4 configurations (--quick leaves out 2 replicas)
    assert all(s == {1, 2} for s in seeds.values())
    report = (tmp_path / "replicas.md").read_text()
    assert "median of 2 runs" in report
    verdicts = [line for line in report.splitlines() if line.startswith("- ") and "4 shared vs 1" in line]
    assert len(verdicts) == 2 and all("(runs " in v for v in verdicts)


def test_replica_seeds_must_be_positive(tmp_path, capsys):
    assert main(["--experiment", "replicas", "--replica-seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--replica-seeds" in capsys.readouterr().err
