"""A supplement to the flow-control experiment: its fairness points with the detector's queue depth at 1.

``python -m bench.sweep.flow_fairness_qd1 [--quick]`` prints the light tenant's p90 TTFT with
round-robin and least-attained-service fairness when a pod may hold 1 waiting request (not 5),
against the light tenant alone; the same points as ``--experiment flow-control``'s fairness
table otherwise (bench/results/flow-control.md quotes it).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from bench.des import DESConfig, WorkloadSpec
from bench.des.flow import FlowPoint, run_flow_point
from picker.flow.config import FlowConfig

from .flow_control import CAPACITY_QPS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    dur, warm = (15.0, 5.0) if args.quick else (60.0, 10.0)
    base = DESConfig(
        duration_s=dur, warmup_s=warm, seed=1, workload=WorkloadSpec("sharegpt-like"), policy="gie-v1"
    )
    two = (("heavy", 10.0), ("light", 1.0))
    for label, fc in (
        ("round-robin, queue depth 1", FlowConfig(enabled=True, queue_depth=1)),
        ("LAS, queue depth 1", FlowConfig(enabled=True, queue_depth=1, fairness="least-attained-service")),
    ):
        r = run_flow_point(FlowPoint(replace(base, qps=1.5 * CAPACITY_QPS), ((0, 1.0),), two, fc, label, 1.5))
        light, heavy = r.per_tenant["light"], r.per_tenant["heavy"]
        print(
            f"| {label} | light {light['ttft_p90'] * 1000:.0f} ms | heavy {heavy['ttft_p90'] * 1000:.0f} ms "
            f"| {r.total_tok_s:.0f} tok/s |"
        )
    alone = run_flow_point(
        FlowPoint(
            replace(base, qps=1.5 * CAPACITY_QPS / 11),
            ((0, 1.0),),
            (("light", 1.0),),
            FlowConfig(enabled=True, queue_depth=1),
            "alone",
            1.5 / 11,
        )
    )
    print(f"| light alone, queue depth 1 | {alone.per_tenant['light']['ttft_p90'] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
