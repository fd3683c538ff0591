"""``infergate-bench sweep --experiment hetero``: a mixed pool, SLO-aware routing, in virtual time.

4 H100 + 4 A100 + 4 L40S (sim/accelerators.yaml), ShareGPT-like load from 50% to 110% of
the pool's capacity (the sum of each accelerator's saturation throughput, measured with
``sim.calibrate.saturation`` at the start of the run), policies round-robin, gie-v1,
default, predicted-latency (cost first) and predicted-latency-fast (headroom first)
(requests carry no SLO headers: the profiles' defaults,
TTFT 500 ms and TPOT 50 ms, are the experiment's SLO). Reports p90 TTFT and NTPOT, SLO
attainment, cost per million output tokens and the latency model's MAPE, with the
issue's goals checked. Writes ``hetero.md``, ``hetero.json`` and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.des import DESConfig, WorkloadSpec
from bench.des.hetero import HeteroConfig, HeteroResult, run_hetero_point

from .provenance import machine, scheduler_version, snapshot_profiles

POOL = ("h100-80gb",) * 4 + ("a100-80gb",) * 4 + ("l40s-48gb",) * 4
POLICIES = ("round-robin", "gie-v1", "default", "predicted-latency", "predicted-latency-fast")
LOADS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
QUICK_LOADS = (0.5, 0.8, 1.1)


def capacities() -> dict[str, float]:
    """Each accelerator's ShareGPT-like saturation (req/s), as the simulator's calibration measures it."""
    from sim.accel import profiles
    from sim.calibrate import saturation

    out = {}
    for name in sorted(set(POOL)):
        out[name] = saturation(profiles()[name].engine_config(), rate=60.0, duration=120.0, warmup=40.0)[
            "req_per_s"
        ]
    return out


def jobs(args: argparse.Namespace, capacity: float, profiles_data: dict) -> list[tuple[HeteroConfig, float]]:
    base = DESConfig(
        replicas=len(POOL),
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
        workload=WorkloadSpec("sharegpt-like"),
        scheduler_config=profiles_data,
    )
    loads = QUICK_LOADS if args.quick else LOADS
    out = []
    for load in loads:
        for pol in args.policies:
            cfg = replace(base, policy=pol, qps=round(load * capacity, 1))
            out.append((HeteroConfig(cfg, POOL), capacity))
    return out


def _run(job):
    try:
        return job, run_hetero_point(job)
    except Exception as exc:  # returned as text: the parent reports it
        return job, f"{type(exc).__name__}: {exc}"


def run_all(js: list, procs: int) -> list[HeteroResult]:
    order = sorted(js, key=lambda j: -j[0].des.qps)
    out = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(max(1, procs)) as pool:
        for i, (job, res) in enumerate(pool.imap_unordered(_run, order), 1):
            if isinstance(res, str):
                raise RuntimeError(f"{job[0].des.policy} @ {job[0].des.qps} failed: {res}")
            out.append(res)
            print(f"\r{i}/{len(order)} points", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def _fmt(x: float, scale: float = 1.0, nd: int = 0) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{nd}f}"


LEARNING = ("predicted-latency", "predicted-latency-fast")


def goals(results: list[HeteroResult]) -> list[str]:
    """The issue's three goals, checked for each profile that routes on predicted latency."""
    by = {(r.point.policy, round(r.load, 2)): r for r in results}
    loads = sorted({round(r.load, 2) for r in results})
    lines = []
    for pol in LEARNING:
        if not any(r.point.policy == pol for r in results):
            continue
        att = []
        for ld in loads:
            g, p = by.get(("gie-v1", ld)), by.get((pol, ld))
            if g and p and g.slo_both >= 0.5:
                att.append((ld, p.slo_both))
        miss = [f"{ld:.0%}: {v:.1%}" for ld, v in att if v < 0.95]
        lines.append(
            f"* `{pol}`: SLO attainment >= 95% wherever gie-v1 attains >= 50% ({len(att)} loads, lowest "
            + (f"{min(v for _, v in att):.1%}" if att else "—")
            + "): "
            + ("**met**" if att and not miss else "**missed** at " + ", ".join(miss) if miss else "—")
        )
        ratios = []
        for ld in loads:
            g, p = by.get(("gie-v1", ld)), by.get((pol, ld))
            if g and p and ld >= 0.8 - 1e-9:
                ratios.append((ld, p.point.ntpot_p90 / g.point.ntpot_p90))
        bad = [r for _, r in ratios if r > 0.8]
        lines.append(
            f"* `{pol}`: p90 NTPOT <= 0.8x gie-v1's at >= 80% load ("
            + ", ".join(f"{ld:.0%}: {r:.2f}x" for ld, r in ratios)
            + "): "
            + ("**met**" if ratios and not bad else "**missed**")
        )
        mapes = [(round(r.load, 2), r.mape_ttft, r.mape_tpot) for r in results if r.point.policy == pol]
        worst = max((max(a, b) for _, a, b in mapes), default=math.nan)
        lines.append(
            f"* `{pol}`: MAPE <= 15% (TTFT / TPOT per load: "
            + ", ".join(f"{ld:.0%}: {a:.0%} / {b:.0%}" for ld, a, b in sorted(mapes))
            + "): "
            + ("**met**" if worst <= 0.15 else "**missed**")
        )
    return lines


def table(results: list[HeteroResult], policies) -> list[str]:
    rows = [
        "| load | QPS | policy | p90 TTFT (s) | p90 NTPOT (ms) | SLO TTFT / TPOT / both "
        "| $ per M output tok: pool / busy | served by H100 / A100 / L40S | MAPE TTFT / TPOT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {p: i for i, p in enumerate(policies)}
    for r in sorted(results, key=lambda r: (r.load, order.get(r.point.policy, 99))):
        p = r.point
        sb = r.served_by
        rows.append(
            f"| {r.load:.0%} | {p.qps:g} | {p.policy} | {_fmt(p.ttft_p90, 1, 3)} | "
            f"{_fmt(p.ntpot_p90, 1e3, 1)} | "
            f"{_fmt(r.slo_ttft, 100, 1)}% / {_fmt(r.slo_tpot, 100, 1)}% / **{_fmt(r.slo_both, 100, 1)}%** | "
            f"{_fmt(r.cost_per_mtok, 1, 3)} / {_fmt(r.busy_cost_per_mtok, 1, 3)} | "
            f"{sb.get('h100-80gb', 0)} / {sb.get('a100-80gb', 0)} / "
            f"{sb.get('l40s-48gb', 0)} | {_fmt(r.mape_ttft, 100, 0)}% / {_fmt(r.mape_tpot, 100, 0)}% |"
        )
    return rows


def plots(results: list[HeteroResult], policies, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    figs = [
        ("hetero-ttft.png", "p90 TTFT (s)", lambda r: r.point.ttft_p90, True),
        ("hetero-ntpot.png", "p90 NTPOT (ms)", lambda r: r.point.ntpot_p90 * 1e3, True),
        ("hetero-slo.png", "SLO attainment (TTFT 500 ms and TPOT 50 ms)", lambda r: r.slo_both, False),
        ("hetero-cost.png", "$ per M output tokens (pods' busy time)", lambda r: r.busy_cost_per_mtok, False),
    ]
    names = []
    for fname, ylabel, get, log in figs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for pol in policies:
            pts = sorted((r.load, get(r)) for r in results if r.point.policy == pol)
            if pts:
                ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=pol)
        ax.set_xlabel("offered load (% of the pool's capacity)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=90)
        plt.close(fig)
        names.append(fname)
    return names


def write(results, policies, out: Path, meta: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "hetero.json").write_text(
        json.dumps({"meta": meta, "results": [r.as_dict() for r in results]}, indent=1, default=str)
    )
    pngs = plots(results, policies, out)
    caps = meta["capacities"]
    lines = [
        "# Heterogeneous pool: SLO-aware routing on predicted latency (DES)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Commit: `{meta['scheduler']}`  ",
        f"Machine: {meta['machine']} (shared with other work while it ran: wall times are not figures)  ",
        f"Wall time: {meta['wall_s']:.0f} s",
        "",
        "Pool: 4 H100 80 GB + 4 A100 80 GB + 4 L40S 48 GB (sim/accelerators.yaml; A100 and L40S are "
        "roofline transfers of the H100 fit, see sim/README.md). Capacity = the sum of each "
        "accelerator's ShareGPT-like saturation: "
        + ", ".join(f"{k} {v:.1f} req/s" for k, v in sorted(caps.items()))
        + f", pool {meta['capacity']:.1f} req/s. Workload ShareGPT-like, Poisson, Standard criticality "
        f"(nothing shed), {meta['warmup']:.0f} s warm-up + {meta['duration']:.0f} s measured per point, "
        f"seed {meta['seed']}, 1 picker replica. SLO: TTFT <= 500 ms and TPOT <= 50 ms "
        "(TPOT = (e2e - TTFT) / (output - 1)); predicted-latency routes on exactly these "
        "(its defaults; no headers). Cost = the pool's price per hour (H100 $3, A100 $1.8, L40S $1; "
        "indicative list prices) x the measured span / output tokens (pool), and each pod's price x its "
        "busy time (steps running) / every output token of the run (busy: what the tokens cost when an "
        "idle pod costs nothing, i.e. a pool scaled to its load). MAPE = the latency model's mean "
        "absolute percentage error over its last 2,000 predictions (the prediction made when the request "
        "was routed, against what it measured).",
        "",
        "## Goals",
        "",
        *goals(results),
        "",
        "## Figures",
        "",
        *table(results, policies),
        "",
        *[f"![{p}]({p})" for p in pngs],
        "",
    ]
    path = out / "hetero.md"
    text = "\n".join(lines)
    marker = "## Analysis"
    if path.exists() and marker in path.read_text():  # keep the hand-written analysis
        text += "\n" + path.read_text()[path.read_text().index(marker) :]
    path.write_text(text)
    return path


def main(args: argparse.Namespace, command: str) -> int:
    t0 = time.monotonic()
    if "--policies" not in command:  # the sweep's default list is the seed experiment's
        args.policies = list(POLICIES)
    args.policies = [p for p in args.policies if p in POLICIES] or list(POLICIES)
    profiles_data, digest = snapshot_profiles(args.scheduler_config)
    caps = capacities()
    capacity = sum(caps[a] for a in POOL)
    js = jobs(args, capacity, profiles_data)
    print(
        f"hetero experiment: {len(js)} points on {args.jobs} processes (pool {capacity:.1f} req/s)",
        file=sys.stderr,
    )
    version = scheduler_version(digest)
    results = run_all(js, args.jobs)
    meta = {
        "command": command,
        "wall_s": time.monotonic() - t0,
        "machine": machine(),
        "scheduler": version,
        "capacities": caps,
        "capacity": capacity,
        "warmup": args.warmup,
        "duration": args.duration,
        "seed": args.seed,
    }
    path = write(results, args.policies, args.out, meta)
    print(f"wrote {path}")
    return 0
