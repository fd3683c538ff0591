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
* ``llm-d-4r`` - the llm-d-like workload through 4 picker replicas that do not share their
  assignments: each replica's approximate index sees a quarter of the traffic, as
  upstream's per-replica index does (llm-d's baseline); ``default`` and ``precise-prefix``.

A full run measures the goal's policies (``default``, ``precise-prefix``, ``oracle``) at each
suite's highest QPS with ``TOP_SEEDS`` seeds and reports the medians; the report is
rewritten after every point, so a cut run keeps what finished.

Policies: ``random``, ``load-only`` (queue and KV with in-flight work, prefix-blind),
``gie-v1``, ``default`` (InferGate's approximate prefix index), ``precise-prefix`` (the
same load terms, prefix from the pods' KV events, bench/des/kvprecise.py) and ``oracle``.
Goals, at each workload's highest load: precise p90 TTFT at most half of ``default``'s,
throughput not below it, and within 1.5x of the oracle's p90 TTFT.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from bench.des import DESConfig, PointResult, WorkloadSpec

from .experiments import base_config
from .formatting import fmt_t
from .provenance import make_meta, scheduler_version
from .results import save_results
from .seed_report import plot_suite

POLICIES = ["random", "load-only", "gie-v1", "default", "precise-prefix", "oracle"]
LLMD = WorkloadSpec(
    "shared-prefix",
    prefix_groups=256,
    prefix_prompts_per_group=5,
    system_tokens=3456,
    question_tokens=128,
    prefix_output_tokens=128,
)


class Suite(NamedTuple):
    title: str
    workload: WorkloadSpec
    points: tuple[float, ...]
    quick: tuple[float, ...]
    policies: tuple[str, ...] = tuple(POLICIES)
    pickers: int = 1  # picker replicas
    shared_view: bool = True  # whether they share their assignments (InferGate's pool view)


SUITES = {
    "llm-d": Suite(
        "llm-d-like: 256 customers x 5 users, 3,456-token contexts (74% of the pool's KV), "
        "128-token queries and answers",
        LLMD,
        (40.0, 80.0, 120.0, 160.0),
        (80.0, 160.0),
    ),
    "prefix": Suite(
        "Shared prefix: 256 groups x 16 prompts, system 2048 + question 256, output 256",
        WorkloadSpec("shared-prefix", prefix_groups=256),
        (40.0, 80.0, 120.0),
        (80.0, 120.0),
    ),
    # llm-d compared against per-replica approximate indexes (upstream's EPP replicas share
    # nothing): the same workload through 4 picker replicas that do not share their view.
    "llm-d-4r": Suite(
        "llm-d-like through 4 picker replicas that do not share their assignments (upstream's "
        "approximate index is per replica)",
        LLMD,
        (80.0, 160.0),
        (160.0,),
        ("default", "precise-prefix"),
        pickers=4,
        shared_view=False,
    ),
}
GOAL_POLICIES = ("default", "precise-prefix", "oracle")  # the goal's; only these get more seeds
TOP_SEEDS = 3  # runs of each suite's highest load for GOAL_POLICIES; medians are reported


def jobs(args: argparse.Namespace) -> list[tuple[str, DESConfig]]:
    """Every (suite, QPS, policy) once; at a full run's highest QPS the goal's policies ``TOP_SEEDS`` times.

    ``--replica-seeds`` (5 by default in a full run, 1 with ``--quick``) is capped at
    ``TOP_SEEDS`` here: the DES is deterministic per seed, the lower points are far from
    the goal's, and the full grid is already an hour on two shared cores.
    """
    base = base_config(args)
    top_seeds = max(1, min(TOP_SEEDS, getattr(args, "replica_seeds", 1) or 1))
    out = []
    for name, su in SUITES.items():
        qs = list(args.points or (su.quick if args.quick else su.points))
        for q in qs:
            for pol in su.policies:
                n = top_seeds if q == max(qs) and pol in GOAL_POLICIES else 1
                for seed in range(args.seed, args.seed + n):
                    cfg = replace(
                        base,
                        policy=pol,
                        qps=float(q),
                        workload=su.workload,
                        seed=seed,
                        picker_replicas=su.pickers,
                        shared_view=su.shared_view,
                    )
                    out.append((name, cfg))
    return out


def _order(todo: list[tuple[str, DESConfig]]) -> list[tuple[str, DESConfig]]:
    """The most expensive points first (as bench/sweep/runner.py), then the first seed first."""
    return sorted(
        todo, key=lambda j: (-j[1].qps * (6 if j[0] == "prefix" else 1) * j[1].picker_replicas, j[1].seed)
    )


def run(args: argparse.Namespace, command: str, digest: str) -> Path:
    """Run the points, rewriting the report after each one (a cut run keeps what finished)."""
    import multiprocessing

    from .runner import PointError, _run

    todo = _order(jobs(args))
    print(f"precise-prefix experiment: {len(todo)} points on {args.jobs} processes", flush=True)
    t0 = time.monotonic()
    version = scheduler_version(digest)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "precise-prefix.md"
    res: list[tuple[str, DESConfig, PointResult]] = []

    def take(item: tuple[str, DESConfig, PointResult | str]) -> None:
        suite, cfg, r = item
        if isinstance(r, str):
            raise PointError(f"{suite} {cfg.policy} @ {cfg.qps:g} QPS seed {cfg.seed} failed: {r}")
        res.append((suite, cfg, r))
        if not args.no_progress:
            print(f"{len(res)}/{len(todo)} {suite} {cfg.policy} {cfg.qps:g} seed {cfg.seed}", flush=True)
        meta = make_meta(args, command, time.monotonic() - t0, version)
        meta["points_done"], meta["points_total"] = len(res), len(todo)
        save_results(args.out / "precise-prefix.json", res, meta)
        path.write_text(report(res, meta))

    if args.jobs <= 1:
        for j in todo:
            take(_run(j))
    else:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for item in pool.imap_unordered(_run, todo):
                take(item)
    plots(res, args.out)
    return path


def _median(rs: list[PointResult]) -> PointResult:
    """The per-field median of one point's seeds (each figure separately)."""
    if len(rs) == 1:
        return rs[0]
    keys = ("ttft_p90", "ttft_p50", "tok_per_min", "prefix_hit_rate", "e2e_p90", "preemptions")
    return replace(rs[0], **{k: statistics.median(getattr(r, k) for r in rs) for k in keys})


def _grid(res) -> tuple[dict, dict]:
    runs: dict[tuple[str, float, str], list[PointResult]] = {}
    for s, c, r in res:
        runs.setdefault((s, c.qps, c.policy), []).append(r)
    return {k: _median(v) for k, v in runs.items()}, runs


def plots(res, out: Path) -> list[Path]:
    """One figure per suite: p90 and p50 TTFT, output tokens/min, engines' hit rate against QPS."""
    by, _runs = _grid(res)
    panels = (
        ("ttft_p90", "p90 TTFT (s)", True),
        ("ttft_p50", "p50 TTFT (s)", True),
        ("tok_per_min", "output tokens/min", False),
        ("prefix_hit_rate", "engines' prefix-cache hit rate", False),
    )
    written = []
    for name, su in SUITES.items():
        grid = {(q, pol): r for (s, q, pol), r in by.items() if s == name}
        if len({q for q, _ in grid}) < 2:
            continue
        p = out / f"precise-prefix-{name}.png"
        plot_suite(su.title, grid, su.policies, p, panels)
        written.append(p)
    return written


def _tok(r: PointResult) -> str:
    return f"{r.tok_per_min / 1e3:.0f}"


def report(res: list[tuple[str, DESConfig, PointResult]], meta: dict) -> str:
    by, runs = _grid(res)
    done, total = meta.get("points_done"), meta.get("points_total")
    lines = [
        "# Precise prefix routing: the experiment",
        "",
        f"Command: `{meta['command']}`  ",
        f"Scheduler: {meta['scheduler']}  ",
        f"Machine: {meta['machine']} (shared with other jobs; the DES runs in virtual time, so the "
        "figures do not depend on the load)  ",
        f"Wall time: {meta['wall_s']:.0f} s",
        "",
        *(
            [f"**PARTIAL: {done} of {total} points finished** (the most loaded first); '-' = not run.", ""]
            if done is not None and done < total
            else []
        ),
        "Where a point ran with several seeds (a full run's highest load), each figure is the median "
        "of the seeds; the seeds' own p90 TTFTs follow the tables.",
        "",
        "The DES (bench/des) runs the real picker code; `precise-prefix` gets the engines' KV events "
        "through the collector's fold and the bus (bench/des/kvprecise.py: deltas every 50 ms scrape, "
        "digests every second).",
        "",
    ]
    verdicts = []
    for name, su in SUITES.items():
        title = su.title
        qs = sorted({q for s, q, _p in by if s == name})
        if not qs:
            continue
        lines += [f"## {name}: {title}", ""]
        for heading, cell in (
            ("p90 TTFT", lambda r: fmt_t(r.ttft_p90)),
            ("p50 TTFT", lambda r: fmt_t(r.ttft_p50)),
            ("Output tokens/min (thousands)", _tok),
            ("Prefix-cache hit rate (engines)", lambda r: f"{r.prefix_hit_rate * 100:.1f}%"),
            ("Preemptions", lambda r: f"{r.preemptions:.0f}"),
        ):
            lines += [f"**{heading}**", "", "| policy | " + " | ".join(f"{q:g} QPS" for q in qs) + " |"]
            lines.append("|---|" + "---|" * len(qs))
            for pol in su.policies:
                row = [cell(by[(name, q, pol)]) if (name, q, pol) in by else "-" for q in qs]
                lines.append(f"| {pol} | " + " | ".join(row) + " |")
            lines.append("")
        top = qs[-1]
        seeded = [
            (pol, runs[(name, top, pol)]) for pol in su.policies if len(runs.get((name, top, pol), ())) > 1
        ]
        if seeded:
            lines += [f"**p90 TTFT at {top:g} QPS, per seed**", ""]
            lines += [f"* {pol}: " + ", ".join(fmt_t(r.ttft_p90) for r in rs) for pol, rs in seeded]
            lines.append("")
        if len(qs) > 1:
            lines += [f"![{name}](precise-prefix-{name}.png)", ""]
        p, d, o = (by.get((name, top, x)) for x in ("precise-prefix", "default", "oracle"))
        o = o or by.get(("llm-d", top, "oracle"))  # the oracle does not depend on the pickers
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
