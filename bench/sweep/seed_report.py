"""The seed experiment's report: per-suite tables and plots, and the verdict per goal (``seed.md``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.des import DESConfig, PointResult

from .experiments import Suite
from .formatting import cost, fmt_ms, fmt_s, fmt_t, ratio
from .results import save_results

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
    ("ntpot_p90", "p90 NTPOT (ms/token)", lambda r: fmt_ms(r.ntpot_p90)),
    ("e2e_p90", "p90 end-to-end latency (s)", lambda r: fmt_s(r.e2e_p90)),
    ("ttft", "TTFT p50 / p90", lambda r: f"{fmt_t(r.ttft_p50)} / {fmt_t(r.ttft_p90)}"),
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


SEED_PANELS = (
    ("window_tok_per_min", "steady-state output tokens/min", False),
    ("ntpot_p90", "p90 NTPOT (s/token)", True),
    ("e2e_p90", "p90 e2e latency (s)", True),
    ("ttft_p90", "p90 TTFT (s)", True),
)


def plot_suite(
    title: str,
    grid: dict[tuple[float, str], PointResult],
    policies: Sequence[str],
    path: Path,
    panels: Sequence[tuple[str, str, bool]] = SEED_PANELS,
) -> None:
    """Four panels (PointResult field, axis label, log scale) against QPS, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = sorted({q for q, _ in grid})
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
    fig.suptitle(title, fontsize=10)
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
                r = ratio(getattr(d, key), getattr(v, key))
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
        if not s.workload.name.startswith("sharegpt"):
            continue
        g = grids[s.name]
        for q in sorted({q for q, _ in g if q >= 500}):
            d, v = g.get((q, "default")), g.get((q, "gie-v1"))
            if d and v:
                gain = 1 - ratio(d.ntpot_p90, v.ntpot_p90)
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
                    r = ratio(getattr(d, key), getattr(rr, key))
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
                r50, r90 = ratio(r.ttft_p50, rr.ttft_p50), ratio(r.ttft_p90, rr.ttft_p90)
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
        f"Machine: {meta['machine']}; {cost(results, meta['wall_s'], args.jobs)}  ",
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
        plot_suite(s.title, grids[s.name], policies, out / png)
        lines += [f"## {s.title}", "", f"![{s.name}]({png})", "", suite_tables(s, grids[s.name], policies)]
    path = out / "seed.md"
    path.write_text("\n".join(lines) + "\n")
    save_results(out / "seed.json", results, meta)
    return path
