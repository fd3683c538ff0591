"""``infergate-bench sweep --experiment flow-control``: the flow-control experiments in the DES.

Four experiments over 10 calibrated replicas, ShareGPT-like lengths (the lognormal fit),
capacity ``C`` = 330 QPS (the fit saturates between 300 and 400 QPS, bench/results/seed.md):

* **mixed**: 20% priority 100, 50% priority 0, 30% priority -1; offered 0.5x-2x C;
  round-robin, gie-v1 (sheds priority < 0 when saturated), flow control (gie-v1's scorers,
  utilization detector, round-robin fairness, FCFS);
* **fairness**: two tenants in one band at 10:1 rates, 1.5x C in total; round-robin and
  least-attained-service fairness, against the light tenant alone;
* **replicas**: mixed at 2x C with 1 picker, 4 pickers sharing the view (pool-wide), and
  4 pickers each on its own (upstream's per-replica flow control);
* **nothing sheddable**: priority 0 only at 1.2x C; round-robin, gie-v1, flow control.

Writes ``flow-control.json`` and ``flow-control.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench.des import DESConfig, WorkloadSpec
from bench.des.flow import FlowPoint, FlowPointResult, run_flow_point
from picker.flow.config import FlowConfig

CAPACITY_QPS = 330.0
MIX = ((100, 0.2), (0, 0.5), (-1, 0.3))
FC = FlowConfig(enabled=True)
FC_LAS = FlowConfig(enabled=True, fairness="least-attained-service")
FC_Q1 = FlowConfig(enabled=True, queue_depth=1)  # a pod may hold 1 waiting request, not 5


def points(args: argparse.Namespace) -> dict[str, list[FlowPoint]]:
    base = DESConfig(
        replicas=args.replicas,
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
        workload=WorkloadSpec("sharegpt-like"),
        scheduler_config=args.profiles_data,
    )
    loads = (0.5, 1.0, 2.0) if args.quick else (0.5, 1.0, 1.5, 2.0)
    rows = [("round-robin", "round-robin", None), ("gie-v1", "gie-v1", None), ("flow control", "gie-v1", FC)]
    out: dict[str, list[FlowPoint]] = {"mixed": [], "fairness": [], "replicas": [], "nothing-sheddable": []}
    for x in loads:
        for label, pol, fc in rows:
            d = replace(base, policy=pol, qps=CAPACITY_QPS * x)
            out["mixed"].append(FlowPoint(d, MIX, flow=fc, label=label, load=x))
        if x in (0.5, 2.0):  # the detector's queue depth: what the top band pays for 5
            d = replace(base, policy="gie-v1", qps=CAPACITY_QPS * x)
            out["mixed"].append(FlowPoint(d, MIX, flow=FC_Q1, label="flow control, queue depth 1", load=x))
    total = 1.5 * CAPACITY_QPS
    two = (("heavy", 10.0), ("light", 1.0))
    for label, fc in (
        ("gie-v1 (no flow control)", None),
        ("flow control, round-robin", FC),
        ("flow control, LAS", FC_LAS),
    ):
        d = replace(base, policy="gie-v1", qps=total)
        out["fairness"].append(FlowPoint(d, ((0, 1.0),), two, fc, label, 1.5))
    d = replace(base, policy="gie-v1", qps=total / 11)
    out["fairness"].append(FlowPoint(d, ((0, 1.0),), (("light", 1.0),), FC, "light alone", 1.5 / 11))
    for x in (1.0, 2.0) if not args.quick else (2.0,):
        for label, n, shared in (
            ("1 replica", 1, True),
            ("4 pool-wide", 4, True),
            ("4 per-replica", 4, False),
        ):
            d = replace(base, policy="gie-v1", qps=CAPACITY_QPS * x, picker_replicas=n, shared_view=shared)
            out["replicas"].append(FlowPoint(d, MIX, flow=FC, label=label, load=x))
    for label, pol, fc in rows:
        d = replace(base, policy=pol, qps=CAPACITY_QPS * 1.2)
        out["nothing-sheddable"].append(FlowPoint(d, ((0, 1.0),), flow=fc, label=label, load=1.2))
    return out


def _run(job: tuple[str, FlowPoint]) -> tuple[str, FlowPointResult]:
    return job[0], run_flow_point(job[1])


def run(args: argparse.Namespace, command: str) -> list[Path]:
    pts = points(args)
    jobs = [(name, p) for name, ps in pts.items() for p in ps]
    print(f"flow-control experiment: {len(jobs)} points on {args.jobs} processes", file=sys.stderr)
    t0 = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, list[FlowPointResult]] = {k: [] for k in pts}
    with ctx.Pool(max(1, args.jobs)) as pool:
        for name, res in pool.imap(_run, jobs):
            results[name].append(res)
            print(f"  {name} {res.label} x{res.load:g}", file=sys.stderr)
    meta = {
        "command": command,
        "quick": bool(args.quick),
        "wall_s": round(time.monotonic() - t0, 1),
        "capacity_qps": CAPACITY_QPS,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "seed": args.seed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    js = args.out / "flow-control.json"
    js.write_text(
        json.dumps(
            {"meta": meta, "results": {k: [asdict(r) for r in v] for k, v in results.items()}},
            indent=1,
            default=str,
        )
    )
    md = args.out / "flow-control.md"
    md.write_text(render(results, meta))
    return [js, md]


def _ms(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1000:.0f}"


def _band_table(rows: list[FlowPointResult]) -> list[str]:
    out = [
        "| policy | load | band | p90 TTFT ms | p90 NTPOT ms | tok/s | rejected |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for b in sorted(r.per_band, reverse=True):
            s = r.per_band[b]
            out.append(
                f"| {r.label} | {r.load:g}x | {b} | {_ms(s['ttft_p90'])} | {_ms(s['ntpot_p90'])} | "
                f"{s['tok_s']:.0f} | {s['rejected']} |"
            )
        out.append(f"| {r.label} | {r.load:g}x | **all** | | | **{r.total_tok_s:.0f}** | {r.rejected} |")
    return out


def render(results: dict[str, list[FlowPointResult]], meta: dict) -> str:
    lines = ["# Flow control in the DES", "", f"Command: `{meta['command']}`", ""]
    lines += [
        f"Capacity C = {meta['capacity_qps']:g} QPS; window {meta['duration_s']:g} s after "
        f"{meta['warmup_s']:g} s warm-up; seed {meta['seed']}; wall {meta['wall_s']} s.",
        "",
    ]
    lines += ["## Mixed priorities over capacity", "", *_band_table(results["mixed"]), ""]
    lines += [
        "## Fairness: two tenants 10:1 at 1.5x C",
        "",
        "| policy | tenant | p90 TTFT ms | tok/s | Jain (service / demand) |",
        "|---|---|---|---|---|",
    ]
    for r in results["fairness"]:
        for t, s in r.per_tenant.items():
            lines.append(f"| {r.label} | {t} | {_ms(s['ttft_p90'])} | {s['tok_s']:.0f} | {r.jain:.3f} |")
    lines += [
        "",
        "## Replicas: 1 vs 4 pool-wide vs 4 per-replica (mixed priorities)",
        "",
        *_band_table(results["replicas"]),
        "",
    ]
    lines += ["## Nothing sheddable, 1.2x C", "", *_band_table(results["nothing-sheddable"]), ""]
    return "\n".join(lines) + "\n"
