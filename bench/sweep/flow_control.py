"""``infergate-bench sweep --experiment flow-control``: the flow-control experiments in the DES.

Four experiments over 10 calibrated replicas, ShareGPT-like lengths (the lognormal fit),
capacity ``C`` = 330 QPS (the fit saturates between 300 and 400 QPS, bench/results/seed.md):

* **mixed**: 20% priority 100, 50% priority 0, 30% priority -1; offered 0.5x-2x C;
  round-robin, gie-v1 (sheds priority < 0 when saturated), flow control (gie-v1's scorers,
  utilization detector with its defaults, round-robin fairness, FCFS), and flow control with
  upstream's gate (queue depth 5 whatever the mix: ``mixed_queue_depth`` 5); at 2x also the
  concurrency detector;
* **fairness**: two tenants in one band at 10:1 rates, 1.5x C in total; round-robin and
  least-attained-service fairness (and round-robin with upstream's gate), against the light
  tenant alone;
* **replicas**: mixed at 2x C with 1 picker, 4 pickers sharing the view (pool-wide), and
  4 pickers each on its own (upstream's per-replica flow control);
* **nothing sheddable**: priority 0 only at 1.2x C; round-robin, gie-v1, flow control.

Writes ``flow-control.json``, ``flow-control.md`` (both rewritten after every point, so an
interrupted run leaves what it finished) and ``flow-control-*.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import subprocess
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
FC_UP = FlowConfig(enabled=True, mixed_queue_depth=5)  # upstream's gate: depth 5 whatever the mix
# The concurrency detector: vLLM's own batch bound (max_num_seqs 256) less a margin, so
# a pod's KV (~240 ShareGPT-like requests) rarely leaves one waiting.
FC_CONC = FlowConfig(enabled=True, detector="concurrency", max_requests_per_pod=200)
UPSTREAM_GATE = "flow control, upstream gate (depth 5)"
FC_CONC_LABEL = "flow control, concurrency 200/pod"


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
        for label, pol, fc in (*rows, (UPSTREAM_GATE, "gie-v1", FC_UP)):
            d = replace(base, policy=pol, qps=CAPACITY_QPS * x)
            out["mixed"].append(FlowPoint(d, MIX, flow=fc, label=label, load=x))
    d = replace(base, policy="gie-v1", qps=CAPACITY_QPS * 2.0)
    out["mixed"].append(FlowPoint(d, MIX, flow=FC_CONC, label=FC_CONC_LABEL, load=2.0))
    total = 1.5 * CAPACITY_QPS
    two = (("heavy", 10.0), ("light", 1.0))
    for label, fc in (
        ("gie-v1 (no flow control)", None),
        ("flow control, round-robin", FC),
        ("flow control, LAS", FC_LAS),
        ("flow control, round-robin, upstream gate", FC_UP),
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
    meta = {
        "command": command,
        "quick": bool(args.quick),
        "wall_s": 0.0,
        "capacity_qps": CAPACITY_QPS,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "seed": args.seed,
        "commit": _commit(),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "points": len(jobs),
        "done": 0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with ctx.Pool(max(1, args.jobs)) as pool:
        for name, res in pool.imap(_run, jobs):
            results[name].append(res)
            meta["done"] += 1
            meta["wall_s"] = round(time.monotonic() - t0, 1)
            print(f"  {name} {res.label} x{res.load:g}", file=sys.stderr, flush=True)
            write(results, meta, args.out, plot=False)
    return write(results, meta, args.out, plot=True)


def _commit() -> str:
    try:
        run = {"capture_output": True, "text": True, "timeout": 10}
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run)  # type: ignore[call-overload]
        dirty = subprocess.run(["git", "status", "--porcelain"], **run)  # type: ignore[call-overload]
        return out.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write(results: dict[str, list[FlowPointResult]], meta: dict, out: Path, plot: bool) -> list[Path]:
    """The JSON and the markdown (and, with ``plot``, the PNGs) of what has finished so far."""
    js = out / "flow-control.json"
    js.write_text(
        json.dumps(
            {"meta": meta, "results": {k: [asdict(r) for r in v] for k, v in results.items()}},
            indent=1,
            default=str,
        )
    )
    pngs = plots(results, out) if plot else []
    md = out / "flow-control.md"
    md.write_text(render(results, meta, pngs))
    return [js, md, *(out / p for p in pngs)]


def plots(results: dict[str, list[FlowPointResult]], out: Path) -> list[str]:
    """Per band, p90 TTFT against offered load for each policy (mixed priorities); total throughput."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    mixed = [r for r in results.get("mixed", []) if r.label != FC_CONC_LABEL]
    if not mixed:
        return []
    labels = list(dict.fromkeys(r.label for r in mixed))
    bands = sorted({b for r in mixed for b in r.per_band}, reverse=True)
    fig, axes = plt.subplots(1, len(bands) + 1, figsize=(4.2 * (len(bands) + 1), 3.8))
    for ax, band in zip(axes, bands, strict=False):
        for label in labels:
            pts = sorted((r.load, r.per_band[band]["ttft_p90"]) for r in mixed if r.label == label)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_title(f"priority {band}: p90 TTFT")
        ax.set_xlabel("offered load (x capacity)")
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    ax = axes[-1]
    for label in labels:
        pts = sorted((r.load, r.window_tok_s) for r in mixed if r.label == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_title("output tok/s in the window")
    ax.set_xlabel("offered load (x capacity)")
    ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "flow-control-mixed.png", dpi=90)
    plt.close(fig)
    return ["flow-control-mixed.png"]


def _ms(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1000:.0f}"


def _band_table(rows: list[FlowPointResult]) -> list[str]:
    out = [
        "| policy | load | band | p90 TTFT ms | p90 NTPOT ms | tok/s | window tok/s | rejected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for b in sorted(r.per_band, reverse=True):
            s = r.per_band[b]
            out.append(
                f"| {r.label} | {r.load:g}x | {b} | {_ms(s['ttft_p90'])} | {_ms(s['ntpot_p90'])} | "
                f"{s['tok_s']:.0f} | | {s['rejected']} |"
            )
        out.append(
            f"| {r.label} | {r.load:g}x | **all** | | | **{r.total_tok_s:.0f}** | "
            f"**{getattr(r, 'window_tok_s', 0.0):.0f}** | {r.rejected} |"
        )
    return out


TOK_NOTE = (
    "tok/s: output tokens of the measured requests over the time until the last of them finished "
    "(the drain included); window tok/s: output tokens finished inside the measured window, per "
    "second (the pool's service rate under that load)."
)


def render(results: dict[str, list[FlowPointResult]], meta: dict, pngs: list[str] | tuple = ()) -> str:
    lines = ["# Flow control in the DES", "", f"Command: `{meta['command']}`  "]
    lines += [
        f"Commit: `{meta.get('commit', '?')}`; machine: {meta.get('machine', '?')} (shared with other "
        "runs: the DES is virtual time, so contention changes the wall time, not the figures)  ",
        f"Capacity C = {meta['capacity_qps']:g} QPS; window {meta['duration_s']:g} s after "
        f"{meta['warmup_s']:g} s warm-up; seed {meta['seed']}; wall {meta['wall_s']} s; "
        f"points {meta.get('done', '?')} of {meta.get('points', '?')}.",
        "",
    ]
    lines += ["## Mixed priorities over capacity", "", TOK_NOTE, "", *_band_table(results["mixed"]), ""]
    lines += [f"![{p}]({p})" for p in pngs] + ([""] if pngs else [])
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
