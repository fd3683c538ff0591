"""``infergate-bench sweep``: the published benchmark, reproduced in virtual time.

Experiments (``--experiment``):

* ``seed`` - 10 replicas of the calibrated engine; QPS 100..1000; every policy. Suites:
  ``sharegpt`` (Standard criticality: nothing is ever shed, routing alone),
  ``sharegpt-shed`` (every request Sheddable: the admission control of design.md §3
  sheds under saturation), ``prefix`` (the shared-prefix workload, at lower QPS: its
  2,304-token prompts saturate the pool near 60-80 QPS) and ``lora`` (12 adapters, Zipf
  popularity, ``max_loras`` 4). Writes ``seed.md``, PNG plots and ``seed.json``.
* ``replicas`` - 1, 2 and 4 picker replicas, with and without the shared view, for
  ``default`` and ``gie-v1``, on ``sharegpt`` and ``prefix`` at a mid and a high point.
  Writes ``replicas.md`` and ``replicas.json``.
* ``all`` - both.

One process per point, ``--jobs`` processes (2 by default: the machine has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.des import POLICIES, DESConfig, PointResult, WorkloadSpec, run_point

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SEED_POINTS = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
PREFIX_POINTS = [20, 40, 60, 80, 100]
LORA_POINTS = [100, 200, 300, 400, 500]
REPLICA_POINTS = {"sharegpt": [150, 250], "prefix": [30, 60]}
REPLICA_POLICIES = ["default", "gie-v1"]
REPLICA_CONFIGS = [  # (picker replicas, shared view, spread)
    (1, True, "round-robin"),
    (2, False, "round-robin"),
    (2, True, "round-robin"),
    (4, False, "round-robin"),
    (4, True, "round-robin"),
    (4, True, "random"),
]


@dataclass(frozen=True)
class Suite:
    """A family of points: one workload and criticality, across QPS and policies."""

    name: str
    title: str
    workload: WorkloadSpec
    points: tuple[float, ...]
    criticality: str = "Standard"


def seed_suites(args: argparse.Namespace) -> list[Suite]:
    groups = args.prefix_groups
    prefix = WorkloadSpec("shared-prefix", prefix_groups=groups)
    pts = tuple(args.points) if args.points else None
    suites = [
        Suite(
            "sharegpt",
            "ShareGPT-like, Standard criticality (nothing shed)",
            WorkloadSpec("sharegpt"),
            pts or tuple(SEED_POINTS),
        ),
        Suite(
            "sharegpt-shed",
            "ShareGPT-like, every request Sheddable (admission control on)",
            WorkloadSpec("sharegpt"),
            pts or tuple(SEED_POINTS),
            "Sheddable",
        ),
        Suite(
            "prefix",
            f"Shared prefix: {groups} groups x 16 prompts, system 2048 + question 256, output 256",
            prefix,
            pts or tuple(PREFIX_POINTS),
        ),
        Suite(
            "lora",
            "LoRA: ShareGPT-like lengths, 12 adapters (Zipf s=1), max_loras 4",
            WorkloadSpec("lora"),
            pts or tuple(LORA_POINTS),
        ),
    ]
    if args.quick:
        quick = {
            "sharegpt": (100, 300, 600),
            "sharegpt-shed": (300, 600),
            "prefix": (30, 80),
            "lora": (100, 300),
        }
        suites = [replace(s, points=pts or quick[s.name]) for s in suites]
    if args.suites:
        keep = set(args.suites)
        suites = [s for s in suites if s.name in keep]
    return suites


def snapshot_profiles(path: Path | None = None, attempts: int = 10, pause_s: float = 3.0) -> tuple[dict, str]:
    """Read and validate the scheduling profiles once, so every point of a run measures the same ones.

    The scheduler is developed in the same tree while sweeps run; a file caught mid-edit
    is retried a few times before giving up.
    """
    import hashlib

    import yaml

    from picker.scheduling import BUILTIN_CONFIG, ConfigError, load_config

    src = Path(path) if path else BUILTIN_CONFIG
    err: Exception | None = None
    for i in range(attempts):
        try:
            text = src.read_text()
            data = yaml.safe_load(text)
            load_config(data)  # validate now, not in a worker
            return data, hashlib.sha256(text.encode()).hexdigest()[:12]
        except (OSError, yaml.YAMLError, ConfigError) as exc:
            err = exc
            if i + 1 < attempts:
                time.sleep(pause_s)
    raise SystemExit(f"scheduling profiles {src} are not valid: {err}")


def base_config(args: argparse.Namespace) -> DESConfig:
    return DESConfig(
        replicas=args.replicas,
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
        scrape_interval_s=args.scrape_interval,
        metrics_delay_s=args.metrics_delay,
        share_delay_s=args.share_delay,
        scheduler_config=args.profiles_data,
    )


def seed_jobs(args: argparse.Namespace) -> list[tuple[str, DESConfig]]:
    base = base_config(args)
    jobs = []
    for s in seed_suites(args):
        for q in s.points:
            for pol in args.policies:
                jobs.append(
                    (
                        s.name,
                        replace(
                            base, policy=pol, qps=float(q), workload=s.workload, criticality=s.criticality
                        ),
                    )
                )
    return jobs


def replica_jobs(args: argparse.Namespace) -> list[tuple[str, DESConfig]]:
    base = base_config(args)
    workloads = {
        "sharegpt": WorkloadSpec("sharegpt"),
        "prefix": WorkloadSpec("shared-prefix", prefix_groups=args.prefix_groups),
    }
    policies = [p for p in args.policies if p in REPLICA_POLICIES] or REPLICA_POLICIES
    configs = REPLICA_CONFIGS if not args.quick else [c for c in REPLICA_CONFIGS if c[0] != 2]
    jobs = []
    for name, wl in workloads.items():
        points = args.points or REPLICA_POINTS[name]
        if args.quick and not args.points:
            points = points[-1:]
        for q in points:
            for pol in policies:
                for n, shared, spread in configs:
                    for k in range(args.replica_seeds):
                        jobs.append(
                            (
                                name,
                                replace(
                                    base,
                                    policy=pol,
                                    qps=float(q),
                                    workload=wl,
                                    picker_replicas=n,
                                    shared_view=shared,
                                    spread=spread,
                                    seed=args.seed + k,
                                ),
                            )
                        )
    return jobs


# ------------------------------------------------------------------ running


class PointError(RuntimeError):
    """A point failed in a worker (the scheduler under test is being edited, a bug...)."""


def _run(job: tuple[str, DESConfig]) -> tuple[str, DESConfig, PointResult | str]:
    # Exceptions are returned as text: some (e.g. ConfigError) do not survive unpickling
    # in the parent, which would hang the pool instead of failing the sweep.
    suite, cfg = job
    try:
        return suite, cfg, run_point(cfg)
    except Exception as exc:
        return suite, cfg, f"{type(exc).__name__}: {exc}"


class Progress:
    """A plain-text progress bar on stderr (no dependency): points done, elapsed, estimate."""

    def __init__(self, total: int, stream=sys.stderr, width: int = 30) -> None:
        self.total, self.stream, self.width = total, stream, width
        self.done = 0
        self.t0 = time.monotonic()

    def update(self, label: str) -> None:
        self.done += 1
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done)
        filled = int(self.width * self.done / max(1, self.total))
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"\r[{bar}] {self.done}/{self.total}  {el:6.0f} s elapsed, ~{eta:4.0f} s left  {label:<40.40}"
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def run_jobs(
    jobs: Sequence[tuple[str, DESConfig]], procs: int, progress: bool = True
) -> list[tuple[str, DESConfig, PointResult]]:
    """Run every point, the most expensive first (so the two cores finish together)."""
    order = sorted(
        jobs,
        key=lambda j: (
            -(
                j[1].qps
                * j[1].duration_s
                * j[1].picker_replicas
                * (6 if j[1].workload.name == "shared-prefix" else 1)
            )
        ),
    )
    bar = Progress(len(order)) if progress else None
    out: list[tuple[str, DESConfig, PointResult]] = []

    def take(res: tuple[str, DESConfig, PointResult | str]) -> None:
        suite, cfg, r = res
        if isinstance(r, str):
            raise PointError(f"{suite} {cfg.policy} @ {cfg.qps:g} QPS failed: {r}")
        out.append((suite, cfg, r))
        if bar:
            bar.update(f"{suite} {cfg.policy} {cfg.qps:g}")

    if procs <= 1:
        for j in order:
            take(_run(j))
        return out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:  # one import of the scheduler per worker: one version per run
        for res in pool.imap_unordered(_run, order):
            take(res)
    return out


# ------------------------------------------------------------------ reports


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1e3:.1f}"


def _s(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def _t(x: float) -> str:
    """A latency that spans milliseconds to minutes, with its unit."""
    if math.isnan(x):
        return "n/a"
    return f"{x * 1e3:.0f} ms" if x < 1.0 else f"{x:.1f} s"


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


METRICS = [  # (key, heading, formatter)
    (
        "tok_per_min",
        "Output tokens/min (thousands), upstream definition: measured tokens / time to the last response",
        lambda r: f"{r.tok_per_min / 1e3:.0f}",
    ),
    (
        "window_tok_per_min",
        "Steady-state output tokens/min (thousands): every response completed inside the "
        "measured window / its length",
        lambda r: f"{r.window_tok_per_min / 1e3:.0f}",
    ),
    ("ntpot_p90", "p90 NTPOT (ms/token)", lambda r: _ms(r.ntpot_p90)),
    ("e2e_p90", "p90 end-to-end latency (s)", lambda r: _s(r.e2e_p90)),
    ("ttft", "TTFT p50 / p90", lambda r: f"{_t(r.ttft_p50)} / {_t(r.ttft_p90)}"),
    ("preemptions", "Preemptions (all engines, measured window)", lambda r: str(r.preemptions)),
    ("shed", "Shed (429) requests", lambda r: f"{r.shed} of {r.arrived}"),
    (
        "prefix_hit_rate",
        "Prefix-cache hit rate (engines, tokens)",
        lambda r: "n/a" if math.isnan(r.prefix_hit_rate) else f"{r.prefix_hit_rate * 100:.1f}%",
    ),
]


def _grid(
    results: Iterable[tuple[str, DESConfig, PointResult]], suite: str
) -> dict[tuple[float, str], PointResult]:
    return {(c.qps, c.policy): r for s, c, r in results if s == suite}


def suite_tables(suite: Suite, grid: dict[tuple[float, str], PointResult], policies: Sequence[str]) -> str:
    qs = sorted({q for q, _ in grid})
    pols = [p for p in policies if any((q, p) in grid for q in qs)]
    lines = []
    for key, heading, fmt in METRICS:
        if key == "prefix_hit_rate" and suite.workload.name != "shared-prefix":
            continue
        if key == "shed" and suite.criticality == "Standard":
            continue
        lines += [f"**{heading}**", "", "| QPS | " + " | ".join(pols) + " |", "|---|" + "---|" * len(pols)]
        for q in qs:
            cells = [fmt(grid[(q, p)]) if (q, p) in grid else "" for p in pols]
            lines.append(f"| {q:g} | " + " | ".join(cells) + " |")
        lines.append("")
    unfinished = sum(r.unfinished for r in grid.values())
    if unfinished:
        lines.append(
            f"({unfinished} measured requests were still open when the drain limit hit; not counted.)\n"
        )
    return "\n".join(lines)


def plot_suite(
    suite: Suite, grid: dict[tuple[float, str], PointResult], policies: Sequence[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = sorted({q for q, _ in grid})
    panels = [
        ("window_tok_per_min", "steady-state output tokens/min", False),
        ("ntpot_p90", "p90 NTPOT (s/token)", True),
        ("e2e_p90", "p90 e2e latency (s)", True),
        ("ttft_p90", "p90 TTFT (s)", True),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, label, log) in zip(axes.flat, panels, strict=True):
        for p in policies:
            xs = [q for q in qs if (q, p) in grid]
            if not xs:
                continue
            ys = [getattr(grid[(q, p)], key) for q in xs]
            ax.plot(xs, ys, marker="o", ms=3, label=p, ls="--" if p == "oracle" else "-")
        ax.set_xlabel("QPS")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(suite.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _verdicts(suites: Sequence[Suite], grids: dict[str, dict[tuple[float, str], PointResult]]) -> list[str]:
    out = []
    # Goal 1: default at least matches gie-v1 everywhere (5% tolerance for simulation noise).
    worse = []
    checked = 0
    for s in suites:
        g = grids[s.name]
        for q in sorted({q for q, _ in g}):
            d, v = g.get((q, "default")), g.get((q, "gie-v1"))
            if not d or not v:
                continue
            checked += 1
            for key, higher_better in (
                ("window_tok_per_min", True),
                ("tok_per_min", True),
                ("ntpot_p90", False),
                ("e2e_p90", False),
                ("ttft_p90", False),
            ):
                r = _ratio(getattr(d, key), getattr(v, key))
                if math.isnan(r):
                    continue
                if (higher_better and r < 0.95) or (not higher_better and r > 1.05):
                    worse.append(f"{s.name} @ {q:g} QPS: {key} default/gie-v1 = {r:.2f}")
    if checked:
        ok = "MET" if not worse else "MISSED"
        out.append(
            "1. **default at least matches gie-v1 everywhere** (both throughputs, p90 NTPOT, p90 e2e, "
            f"p90 TTFT; 5% tolerance; {checked} points): **{ok}**" + (":" if worse else ".")
        )
        out += [f"   - {w}" for w in worse]
    # Goal 2: >= 20% better p90 NTPOT at QPS >= 500 (ShareGPT suites).
    rows = []
    for s in suites:
        if s.workload.name != "sharegpt":
            continue
        g = grids[s.name]
        for q in sorted({q for q, _ in g if q >= 500}):
            d, v = g.get((q, "default")), g.get((q, "gie-v1"))
            if d and v:
                gain = 1 - _ratio(d.ntpot_p90, v.ntpot_p90)
                rows.append((s.name, q, gain))
    if rows:
        met = all(g >= 0.20 for _, _, g in rows)
        by_suite: dict[str, list[str]] = {}
        for name, q, gain in rows:
            by_suite.setdefault(name, []).append(f"{q:g}: {gain * 100:+.0f}%")
        out.append(
            "2. **default beats gie-v1 by >= 20% on p90 NTPOT at QPS >= 500**: "
            f"**{'MET' if met else 'MISSED'}** (NTPOT reduction vs gie-v1 per QPS)"
        )
        out += [f"   - {name}: " + ", ".join(v) for name, v in by_suite.items()]
    # Goal 3: throughput not below round-robin (2% tolerance), on both throughput definitions.
    for key, what, num in (
        ("window_tok_per_min", "steady-state output tokens/min", "3a"),
        ("tok_per_min", "upstream definition, tokens / time to the last response", "3b"),
    ):
        low = []
        n = 0
        for s in suites:
            g = grids[s.name]
            for q in sorted({q for q, _ in g}):
                d, rr = g.get((q, "default")), g.get((q, "round-robin"))
                if d and rr:
                    n += 1
                    r = _ratio(getattr(d, key), getattr(rr, key))
                    if r < 0.98:
                        low.append(f"{s.name} @ {q:g} QPS: default/round-robin = {r:.2f}")
        if n:
            out.append(
                f"{num}. **throughput not below round-robin** ({what}; 2% tolerance, {n} points): "
                f"**{'MET' if not low else 'MISSED'}**" + (":" if low else ".")
            )
            out += [f"   - {w}" for w in low]
    # Goal 4: prefix-aware TTFT gain on the shared-prefix workload.
    if "prefix" in grids:
        g = grids["prefix"]
        parts = []
        worse = []
        for q in sorted({q for q, _ in g}):
            rr = g.get((q, "round-robin"))
            if not rr:
                continue
            cells = []
            for p in ("gie-v1", "default"):
                r = g.get((q, p))
                if not r:
                    continue
                r50, r90 = _ratio(r.ttft_p50, rr.ttft_p50), _ratio(r.ttft_p90, rr.ttft_p90)
                cells.append(f"{p} p50 {r50:.2f}x, p90 {r90:.2f}x")
                worse += [f"{p} @ {q:g} QPS ({k})" for k, v in (("p50", r50), ("p90", r90)) if not v < 1.0]
            parts.append(f"{q:g} QPS: " + "; ".join(cells))
        verdict = "MET" if not worse else ("PARTLY MET, not at: " + ", ".join(worse))
        out.append(
            "4. **shared-prefix workload shows the TTFT gain of prefix-aware policies** "
            f"(TTFT vs round-robin, lower is better): **{verdict}**"
        )
        out += [f"   - {p}" for p in parts]
    return out


def scheduler_version(profiles_digest: str = "") -> str:
    """Which scheduler was measured: HEAD, whether picker/scheduling has local edits, profiles digest."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "picker/scheduling"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", ""
    digest = profiles_digest or "n/a"
    edits = " + uncommitted picker/scheduling edits" if dirty else ""
    return f"commit {head}{edits}, profiles.yaml sha256 {digest}"


def _cost(results, wall_s: float, jobs: int) -> str:
    cpu = sum(r.cpu_s for _, _, r in results)
    if cpu <= 0:
        return f"{len(results)} points, wall time {wall_s:.0f} s."
    return (
        f"{len(results)} points, wall time {wall_s:.0f} s; {cpu:.0f} CPU-s in the workers, i.e. "
        f"~{cpu / max(1, jobs):.0f} s of wall time on {jobs} idle cores."
    )


def machine() -> str:
    return (
        f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def make_meta(args: argparse.Namespace, command: str, wall_s: float, scheduler: str) -> dict:
    """What a report states about its run; stored next to the points so reports can be re-rendered."""
    keys = (
        "replicas",
        "scrape_interval",
        "metrics_delay",
        "share_delay",
        "warmup",
        "duration",
        "seed",
        "replica_seeds",
        "jobs",
        "prefix_groups",
    )
    return {
        "command": command,
        "wall_s": wall_s,
        "machine": machine(),
        "scheduler": scheduler,
        **{k: getattr(args, k) for k in keys},
    }


def write_seed(results, suites: Sequence[Suite], policies: Sequence[str], out: Path, meta: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(**meta)
    present = {s for s, _, _ in results}
    suites = [s for s in suites if s.name in present]
    grids = {s.name: _grid(results, s.name) for s in suites}
    lines = [
        "# Seed experiment: the Gateway API Inference Extension launch benchmark, in virtual time",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {_cost(results, meta['wall_s'], args.jobs)}  ",
        f"Scheduler: {meta['scheduler']}.  ",
        f"Model: {args.replicas} replicas of the calibrated Llama-2-7B/H100 engine (sim/engine.py defaults: "
        "LoRA-enabled deployment, ~26 req/s ShareGPT saturation per replica); 1 picker replica; metrics "
        f"scraped every {args.scrape_interval * 1e3:.0f} ms + {args.metrics_delay * 1e3:.0f} ms propagation; "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured window of Poisson arrivals, then drained "
        "(latencies include the whole queueing); non-streaming; seed "
        f"{args.seed}. See bench/README.md for the model.",
        "",
        "## Verdict per goal",
        "",
        *_verdicts(suites, grids),
        "",
    ]
    for s in suites:
        png = f"seed-{s.name}.png"
        plot_suite(s, grids[s.name], policies, out / png)
        lines += [f"## {s.title}", "", f"![{s.name}]({png})", "", suite_tables(s, grids[s.name], policies)]
    path = out / "seed.md"
    path.write_text("\n".join(lines) + "\n")
    save_results(out / "seed.json", results, meta)
    return path


def save_results(path: Path, results, meta: dict) -> None:
    raw = [{"suite": s, **r.as_dict(), "config": c.label()} for s, c, r in results]
    path.write_text(json.dumps({"meta": meta, "points": raw}, indent=1, default=str) + "\n")


def load_results(path: Path) -> tuple[dict, list[tuple[str, DESConfig, PointResult]]]:
    """Read a results JSON back (also the first format, a bare list whose meta is in the .md header)."""
    import dataclasses
    import re

    data = json.loads(path.read_text())
    if isinstance(data, list):
        md = path.with_suffix(".md").read_text() if path.with_suffix(".md").exists() else ""

        def grab(pattern: str, default: str) -> str:
            m = re.search(pattern, md)
            return m.group(1) if m else default

        meta = {
            "command": grab(r"Command: `([^`]*)`", "infergate-bench sweep"),
            "wall_s": float(grab(r"wall time (\d+) s", "nan")),
            "machine": grab(r"Machine: ([^;]*);", machine()),
            "scheduler": grab(r"Scheduler: (.*?)\.  ", "unknown"),
        }
        points = data
    else:
        meta, points = data["meta"], data["points"]
    cfg_fields = {f.name for f in dataclasses.fields(DESConfig)} - {"workload", "engine"}
    res_fields = {f.name for f in dataclasses.fields(PointResult)}
    out = []
    for row in points:
        label = row["config"]
        cfg = DESConfig(
            **{k: v for k, v in label.items() if k in cfg_fields}, workload=WorkloadSpec(label["workload"])
        )
        for k, v in (
            ("scrape_interval", "scrape_interval_s"),
            ("metrics_delay", "metrics_delay_s"),
            ("share_delay", "share_delay_s"),
            ("warmup", "warmup_s"),
            ("duration", "duration_s"),
            ("seed", "seed"),
            ("replicas", "replicas"),
        ):
            meta.setdefault(k, label[v])
        meta.setdefault("jobs", 2)
        meta.setdefault("prefix_groups", 256)
        out.append((row["suite"], cfg, PointResult(**{k: v for k, v in row.items() if k in res_fields})))
    return meta, out


def _pct(a: float, b: float) -> str:
    r = _ratio(a, b)
    return "n/a" if math.isnan(r) else f"{(r - 1) * 100:+.1f}%"


REPLICA_FIGURES = ("ntpot_p90", "ttft_p90", "prefix_hit_rate", "e2e_p90")


def median_result(runs: Sequence[PointResult]) -> PointResult:
    """One point's figures as the medians over its seeds (NaNs, e.g. no prefix queries, left out).

    The median, not the mean: near the knee of a bimodal latency distribution (prefix
    hits and misses), one run in several lands its p90 on the slow side; the median
    reports the typical run and the per-run range shows the outliers.
    """

    def median(key: str) -> float:
        xs = [getattr(r, key) for r in runs if not math.isnan(getattr(r, key))]
        return statistics.median(xs) if xs else math.nan

    return replace(runs[0], **{k: median(k) for k in REPLICA_FIGURES})


def _ratio_range(runs: dict[int, PointResult], base: dict[int, PointResult], key: str) -> str:
    """min-max of the per-seed ratios (runs and base by seed): how much one run can say."""
    ratios = [
        x
        for seed, r in runs.items()
        if seed in base and not math.isnan(x := _ratio(getattr(r, key), getattr(base[seed], key)))
    ]
    return f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""


def write_replicas(results, out: Path, meta: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(**meta)
    seeds = meta.get("replica_seeds", 1)
    lines = [
        "# Shared view across picker replicas",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {_cost(results, meta['wall_s'], args.jobs)}  ",
        f"Scheduler: {meta['scheduler']}.  ",
        "N picker replicas, each with its own scheduler; arrivals spread across them; **shared** = every "
        f"replica's assignments and completions reach its peers {args.share_delay * 1e3:.0f} ms later (what "
        "picker/sharing does over NATS), and each replica knows its rank among them (what the sharing "
        "layer's liveness watch tells it); **alone** = each replica knows only its own traffic. Metrics "
        f"scraped every {args.scrape_interval * 1e3:.0f} ms + {args.metrics_delay * 1e3:.0f} ms. "
        f"Every figure is the median of {seeds} runs with different seeds "
        f"({args.seed}..{args.seed + seeds - 1}); the verdict gives the median's ratio and, in brackets, "
        "the range of the per-seed ratios. "
        "Target: 4 replicas with sharing within 5% of 1 replica on every figure.",
        "",
    ]
    header_len = len(lines)
    verdicts = []
    # (workload, QPS, policy) -> (replicas, shared, spread) -> seed -> result
    runs_by: dict[tuple[str, float, str], dict[tuple[int, bool, str], dict[int, PointResult]]] = {}
    for s, c, r in results:
        key = (c.picker_replicas, c.shared_view, c.spread)
        runs_by.setdefault((s, c.qps, c.policy), {}).setdefault(key, {})[c.seed] = r
    for (wl, q, pol), runs in sorted(runs_by.items()):
        rows = {key: median_result(list(rs.values())) for key, rs in runs.items()}
        one = rows.get((1, True, "round-robin"))
        lines += [
            f"## {wl} @ {q:g} QPS, {pol}",
            "",
            "| picker replicas | view | spread | p90 NTPOT (ms) | p90 TTFT | prefix hit rate | "
            "p90 e2e (s) | vs 1 replica (NTPOT / TTFT / hit) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key in sorted(rows, key=lambda k: (k[0], not k[1], k[2])):
            r = rows[key]
            n, shared, spread = key
            hit = "n/a" if math.isnan(r.prefix_hit_rate) else f"{r.prefix_hit_rate * 100:.1f}%"
            vs = ""
            if one and key != (1, True, "round-robin"):
                vs = (
                    f"{_pct(r.ntpot_p90, one.ntpot_p90)} / {_pct(r.ttft_p90, one.ttft_p90)} / "
                    f"{_pct(r.prefix_hit_rate, one.prefix_hit_rate)}"
                )
            view = "-" if n == 1 else ("shared" if shared else "alone")
            lines.append(
                f"| {n} | {view} | {spread if n > 1 else '-'} | {_ms(r.ntpot_p90)} | "
                f"{_t(r.ttft_p90)} | {hit} | {_s(r.e2e_p90)} | {vs} |"
            )
        lines.append("")
        four = rows.get((4, True, "round-robin"))
        if one and four:
            keys = {"p90 NTPOT": "ntpot_p90", "p90 TTFT": "ttft_p90"}
            if one.prefix_hit_rate > 0.01:
                keys["hit rate"] = "prefix_hit_rate"
            figs = {name: _ratio(getattr(four, k), getattr(one, k)) for name, k in keys.items()}
            spans = {
                name: _ratio_range(runs[(4, True, "round-robin")], runs[(1, True, "round-robin")], k)
                for name, k in keys.items()
            }
            # latency figures must not be >5% worse; the hit rate must not be >5% lower
            bad = [k for k, v in figs.items() if (v < 0.95 if k == "hit rate" else v > 1.05)]
            verdicts.append(
                f"- {wl} @ {q:g} QPS, {pol}: 4 shared vs 1 = "
                + ", ".join(
                    f"{k} {v:.3f}x" + (f" (runs {spans[k]})" if spans[k] else "") for k, v in figs.items()
                )
                + (f" -> **MISSED** ({', '.join(bad)})" if bad else " -> **within 5%**")
            )
    lines[header_len:header_len] = ["## Verdict: 4 replicas with sharing vs 1 replica", "", *verdicts, ""]
    path = out / "replicas.md"
    path.write_text("\n".join(lines) + "\n")
    save_results(out / "replicas.json", results, meta)
    return path


# ------------------------------------------------------------------ CLI


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="infergate-bench sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--experiment", choices=("seed", "replicas", "all"), default="seed")
    ap.add_argument("--quick", action="store_true", help="a short smoke version (few points, 15 s windows)")
    ap.add_argument(
        "--points", type=_floats, default=None, help="comma-separated QPS (overrides every suite)"
    )
    ap.add_argument("--policies", type=_names, default=list(POLICIES), help=f"subset of {','.join(POLICIES)}")
    ap.add_argument(
        "--suites", type=_names, default=None, help="seed suites: sharegpt,sharegpt-shed,prefix,lora"
    )
    ap.add_argument("--duration", type=float, default=None, help="measured window per point, virtual s (60)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up per point, virtual s (10)")
    ap.add_argument("--replicas", type=int, default=10, help="model-server replicas")
    ap.add_argument("--prefix-groups", type=int, default=256, help="shared-prefix workload groups")
    ap.add_argument("--scrape-interval", type=float, default=0.050, help="metrics scrape interval, s")
    ap.add_argument("--metrics-delay", type=float, default=0.005, help="scrape -> picker propagation, s")
    ap.add_argument("--share-delay", type=float, default=0.005, help="peer event propagation, s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--replica-seeds",
        type=int,
        default=None,
        help="replicas experiment: runs per point (seeds SEED, SEED+1, ...); figures are their medians "
        "(5; --quick: 1)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--scheduler-config",
        type=Path,
        default=None,
        help="scheduling profiles YAML (default: picker/scheduling/profiles.yaml, read once)",
    )
    ap.add_argument(
        "--render",
        type=Path,
        default=None,
        help="re-render the reports from DIR/seed.json and DIR/replicas.json into --out (no run)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        print(f"unknown policies: {', '.join(unknown)} (known: {', '.join(POLICIES)})", file=sys.stderr)
        return 2
    if args.duration is None:
        args.duration = 15.0 if args.quick else 60.0
    if args.warmup is None:
        args.warmup = 5.0 if args.quick else 10.0
    if args.replica_seeds is None:
        args.replica_seeds = 1 if args.quick else 5
    if args.replica_seeds < 1:
        print("--replica-seeds must be at least 1", file=sys.stderr)
        return 2
    command = "infergate-bench sweep " + " ".join(argv)
    t0 = time.monotonic()
    written = []
    args.profiles_data, digest = (None, "") if args.render else snapshot_profiles(args.scheduler_config)
    if args.render:
        for name in ("seed", "replicas"):
            src = args.render / f"{name}.json"
            if not src.exists():
                continue
            meta, res = load_results(src)
            if name == "seed":
                ns = argparse.Namespace(
                    **{
                        **vars(args),
                        "prefix_groups": meta["prefix_groups"],
                        "suites": None,
                        "quick": False,
                        "points": None,
                    }
                )
                written.append(write_seed(res, seed_suites(ns), args.policies, args.out, meta))
            else:
                written.append(write_replicas(res, args.out, meta))
        for p in written:
            print(f"wrote {p}")
        return 0 if written else 1
    if args.experiment in ("seed", "all"):
        suites = seed_suites(args)
        jobs = seed_jobs(args)
        print(f"seed experiment: {len(jobs)} points on {args.jobs} processes", file=sys.stderr)
        t1 = time.monotonic()
        version = scheduler_version(digest)  # now: the workers import the scheduler code as they start
        try:
            res = run_jobs(jobs, args.jobs, not args.no_progress)
        except PointError as exc:
            print(f"\nsweep failed: {exc}", file=sys.stderr)
            return 1
        written.append(
            write_seed(
                res, suites, args.policies, args.out, make_meta(args, command, time.monotonic() - t1, version)
            )
        )
    if args.experiment in ("replicas", "all"):
        jobs = replica_jobs(args)
        print(f"replicas experiment: {len(jobs)} points on {args.jobs} processes", file=sys.stderr)
        t1 = time.monotonic()
        version = scheduler_version(digest)
        try:
            res = run_jobs(jobs, args.jobs, not args.no_progress)
        except PointError as exc:
            print(f"\nsweep failed: {exc}", file=sys.stderr)
            return 1
        meta = make_meta(args, command, time.monotonic() - t1, version)
        written.append(write_replicas(res, args.out, meta))
    for p in written:
        print(f"wrote {p}")
    print(f"wall time {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
