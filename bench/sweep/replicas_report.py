"""The replicas experiment's report: medians over seeds, N replicas against one (``replicas.md``)."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.des import PointResult

from .formatting import cost, fmt_ms, fmt_s, fmt_t, pct, ratio
from .results import save_results

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
        if seed in base and not math.isnan(x := ratio(getattr(r, key), getattr(base[seed], key)))
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
        f"Machine: {meta['machine']}; {cost(results, meta['wall_s'], args.jobs)}  ",
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
                    f"{pct(r.ntpot_p90, one.ntpot_p90)} / {pct(r.ttft_p90, one.ttft_p90)} / "
                    f"{pct(r.prefix_hit_rate, one.prefix_hit_rate)}"
                )
            view = "-" if n == 1 else ("shared" if shared else "alone")
            lines.append(
                f"| {n} | {view} | {spread if n > 1 else '-'} | {fmt_ms(r.ntpot_p90)} | "
                f"{fmt_t(r.ttft_p90)} | {hit} | {fmt_s(r.e2e_p90)} | {vs} |"
            )
        lines.append("")
        four = rows.get((4, True, "round-robin"))
        if one and four:
            keys = {"p90 NTPOT": "ntpot_p90", "p90 TTFT": "ttft_p90"}
            if one.prefix_hit_rate > 0.01:
                keys["hit rate"] = "prefix_hit_rate"
            figs = {name: ratio(getattr(four, k), getattr(one, k)) for name, k in keys.items()}
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
