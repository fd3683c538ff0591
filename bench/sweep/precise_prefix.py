"""The precise-prefix experiment: routing from the pods' KV events against the other policies.

``infergate-bench sweep --experiment precise-prefix [--quick]`` writes
``precise-prefix.md`` and ``precise-prefix.json``.

Two workloads at rising QPS on the seed's pool (10 calibrated engines):

* ``llm-d`` - llm-d's precise-prefix benchmark scaled to this pool: many customers with a
  long shared context, a few users each, short queries. llm-d ran 150 customers x 5 users
  with 6k-token contexts on 8 pods (KV demand ~73% of the cluster); here 256 customers x 5
  users with 3,456-token contexts (216 blocks each: 55,296 blocks, 74% of the pool's
  74,630) and 128-token queries and answers (the engines' max_model_len is 4,096).
* ``prefix`` - the seed's shared-prefix workload (256 groups x 16 prompts, system 2,048 +
  question 256, output 256).

Policies: ``random``, ``load-only`` (queue and KV with in-flight work, prefix-blind),
``gie-v1``, ``default`` (InferGate's approximate prefix index), ``precise-prefix`` (the
same load terms, prefix from the pods' KV events, bench/des/kvprecise.py) and ``oracle``.
Goals, at each workload's highest load: precise p90 TTFT at most half of ``default``'s,
throughput not below it, and within 1.5x of the oracle's p90 TTFT.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

from bench.des import DESConfig, PointResult, WorkloadSpec

from .experiments import base_config
from .formatting import fmt_t
from .provenance import make_meta, scheduler_version
from .results import save_results
from .runner import run_jobs

POLICIES = ["random", "load-only", "gie-v1", "default", "precise-prefix", "oracle"]
LLMD = WorkloadSpec(
    "shared-prefix",
    prefix_groups=256,
    prefix_prompts_per_group=5,
    system_tokens=3456,
    question_tokens=128,
    prefix_output_tokens=128,
)
SUITES = {  # name -> (title, workload, points, quick points)
    "llm-d": (
        "llm-d-like: 256 customers x 5 users, 3,456-token contexts (74% of the pool's KV), "
        "128-token queries and answers",
        LLMD,
        (40.0, 80.0, 120.0, 160.0),
        (80.0, 160.0),
    ),
    "prefix": (
        "Shared prefix: 256 groups x 16 prompts, system 2048 + question 256, output 256",
        WorkloadSpec("shared-prefix", prefix_groups=256),
        (40.0, 80.0, 120.0),
        (80.0, 120.0),
    ),
}


def jobs(args: argparse.Namespace) -> list[tuple[str, DESConfig]]:
    base = base_config(args)
    out = []
    for name, (_title, wl, points, quick) in SUITES.items():
        for q in args.points or (quick if args.quick else points):
            for pol in POLICIES:
                out.append((name, replace(base, policy=pol, qps=float(q), workload=wl)))
    return out


def run(args: argparse.Namespace, command: str, digest: str) -> Path:
    todo = jobs(args)
    print(f"precise-prefix experiment: {len(todo)} points on {args.jobs} processes")
    t0 = time.monotonic()
    version = scheduler_version(digest)
    res = run_jobs(todo, args.jobs, not args.no_progress)
    meta = make_meta(args, command, time.monotonic() - t0, version)
    args.out.mkdir(parents=True, exist_ok=True)
    save_results(args.out / "precise-prefix.json", res, meta)
    path = args.out / "precise-prefix.md"
    path.write_text(report(res, meta))
    return path


def _tok(r: PointResult) -> str:
    return f"{r.tok_per_min / 1e3:.0f}"


def report(res: list[tuple[str, DESConfig, PointResult]], meta: dict) -> str:
    by = {(s, c.qps, c.policy): r for s, c, r in res}
    lines = [
        "# Precise prefix routing: the experiment",
        "",
        f"Command: `{meta['command']}`  ",
        f"Scheduler: {meta['scheduler']}  ",
        f"Machine: {meta['machine']} (shared with other jobs; the DES runs in virtual time, so the "
        "figures do not depend on the load)  ",
        f"Wall time: {meta['wall_s']:.0f} s",
        "",
        "The DES (bench/des) runs the real picker code; `precise-prefix` gets the engines' KV events "
        "through the collector's fold and the bus (bench/des/kvprecise.py: deltas every 50 ms scrape, "
        "digests every second).",
        "",
    ]
    verdicts = []
    for name, (title, _wl, _pts, _q) in SUITES.items():
        qs = sorted({q for s, q, _p in by if s == name})
        if not qs:
            continue
        lines += [f"## {name}: {title}", ""]
        for heading, cell in (
            ("p90 TTFT", lambda r: fmt_t(r.ttft_p90)),
            ("p50 TTFT", lambda r: fmt_t(r.ttft_p50)),
            ("Output tokens/min (thousands)", _tok),
            ("Prefix-cache hit rate (engines)", lambda r: f"{r.prefix_hit_rate * 100:.1f}%"),
        ):
            lines += [f"**{heading}**", "", "| policy | " + " | ".join(f"{q:g} QPS" for q in qs) + " |"]
            lines.append("|---|" + "---|" * len(qs))
            for pol in POLICIES:
                row = [cell(by[(name, q, pol)]) if (name, q, pol) in by else "-" for q in qs]
                lines.append(f"| {pol} | " + " | ".join(row) + " |")
            lines.append("")
        top = qs[-1]
        p, d, o = (by.get((name, top, x)) for x in ("precise-prefix", "default", "oracle"))
        if p and d and o:
            half = p.ttft_p90 <= 0.5 * d.ttft_p90
            thr = p.tok_per_min >= d.tok_per_min
            orc = p.ttft_p90 <= 1.5 * o.ttft_p90
            verdicts.append(
                f"* **{name}, {top:g} QPS**: precise p90 TTFT {fmt_t(p.ttft_p90)} vs approximate "
                f"{fmt_t(d.ttft_p90)} ({_ratio(p.ttft_p90, d.ttft_p90)}; goal <= 0.5x: "
                f"{'met' if half else 'missed'}); throughput {_tok(p)}k vs {_tok(d)}k tok/min "
                f"(goal not below: {'met' if thr else 'missed'}); oracle {fmt_t(o.ttft_p90)} "
                f"({_ratio(p.ttft_p90, o.ttft_p90)}; goal <= 1.5x: {'met' if orc else 'missed'})"
            )
    lines += ["## Goals at the highest load", "", *verdicts, ""]
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    if not (b > 0) or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.2f}x"
