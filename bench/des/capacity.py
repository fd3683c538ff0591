"""The seed experiment with the pickers' own CPU charged: what 1 and 4 replicas carry.

``python -m bench.des.capacity [--points 100,300,...] [--replicas 1,4] [--out FILE.json]``

Runs the seed experiment's ShareGPT suite (the sweep's defaults: 10 calibrated engines,
60 s measured window after a 10 s warm-up, seed 1, the ``default`` profile) at each QPS,
for each picker replica count (the shared view, round-robin spread), under each CPU
model of :data:`bench.des.picker_cpu.MEASURED`: ``free`` (what every earlier DES figure
assumed), ``decision`` (the request path of one picker process, measured by the ext_proc
benchmark) and ``decision+stream`` (plus one round trip per streamed output token).
Prints a markdown table; ``--out`` also keeps the raw points.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from .cluster import DESConfig, PointResult, run_point
from .picker_cpu import MEASURED
from .workload import WorkloadSpec

POINTS = (100, 300, 500, 700, 900, 1000)


def jobs(args: argparse.Namespace) -> list[DESConfig]:
    base = DESConfig(
        policy=args.policy,
        workload=WorkloadSpec(args.workload),
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
    )
    out = []
    for model in args.models:
        for n in args.replicas:
            for qps in args.points:
                out.append(replace(base, qps=float(qps), picker_replicas=n, picker_cpu=MEASURED[model]))
    return out


def _fmt(x: float, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:,.{digits}f}"


def table(rows: list[tuple[DESConfig, PointResult]]) -> str:
    lines = [
        "| CPU model | pickers | QPS | busiest core's demand | picker wait p50 / p90 (ms) | served / arrived "
        "| unfinished | steady tok/min (k) | TTFT p50 / p90 (s) | e2e p90 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg, r in rows:
        lines.append(
            f"| {r.picker_cpu} | {cfg.picker_replicas} | {cfg.qps:.0f} | {r.picker_util:.2f} "
            f"| {_fmt(r.picker_wait_p50, 1e3, 1)} / {_fmt(r.picker_wait_p90, 1e3, 1)} "
            f"| {r.served} / {r.arrived} | {r.unfinished} | {_fmt(r.window_tok_per_min, 1e-3)} "
            f"| {_fmt(r.ttft_p50, 1, 2)} / {_fmt(r.ttft_p90, 1, 2)} | {_fmt(r.e2e_p90, 1, 1)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.des.capacity", description=__doc__.splitlines()[0])
    p.add_argument("--points", type=lambda s: [float(x) for x in s.split(",")], default=list(POINTS))
    p.add_argument("--replicas", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MEASURED))
    p.add_argument("--policy", default="default")
    p.add_argument("--workload", default="sharegpt-like")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfgs = jobs(args)
    results = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for cfg, r in zip(cfgs, pool.map(run_point, cfgs), strict=True):
            results.append(r)
            print(table([(cfg, r)]).splitlines()[-1], file=sys.stderr, flush=True)  # progress
    rows = list(zip(cfgs, results, strict=True))
    print(table(rows))
    if args.out is not None:
        raw = [
            {**r.as_dict(), "config": c.label(), "decision_s": c.picker_cpu.decision_s,
             "per_token_s": c.picker_cpu.per_token_s}
            for c, r in rows
        ]  # fmt: skip
        args.out.write_text(json.dumps(raw, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
