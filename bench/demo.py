"""``make demo`` / ``infergate-bench demo``: the whole stack on this machine, the picker against round-robin.

It starts NATS, simulated vLLM pods (calibrated to Llama-2-7B on an H100, slowed down by
``--time-scale`` so two cores can emulate the load faithfully), one collector per
simulated node, two picker replicas, the autoscaler, and two Envoys: one consulting the
pickers over ext_proc, one doing plain round-robin over the same pods. It then sends the
same ShareGPT-like Poisson load through each in turn and prints one table.

Latencies are reported in H100-equivalent time (wall time divided by the time scale),
throughput in H100-equivalent requests and tokens per second, so the figures read as the
simulated GPUs' own. The report (markdown) and a latency plot go to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.loadgen import LoadResult, run_load, sharegpt_items
from bench.stack import BASE_MODEL, NAMESPACE, Stack, StackConfig

DEFAULT_OUT = Path("bench/results/demo")


@dataclass(frozen=True)
class Row:
    name: str
    summary: dict


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="infergate-bench demo", description=__doc__.splitlines()[0])
    p.add_argument("--time-scale", type=float, default=8.0, help="wall seconds per simulated H100 second")
    p.add_argument("--qps", type=float, default=100.0, help="offered load in H100-equivalent requests/s")
    p.add_argument("--duration", type=float, default=45.0, help="wall seconds of sending per run")
    p.add_argument("--pickers", type=int, default=2, help="picker replicas")
    p.add_argument("--profile", default="default", help="scheduler profile of the pickers")
    p.add_argument("--seed", type=int, default=1, help="workload seed (both runs get the same requests)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the report and plot")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(demo(args))
    except KeyboardInterrupt:  # the stack was stopped by its context manager on the way out
        print("\ninterrupted; every process the demo started has been stopped", file=sys.stderr)
        return 130


async def demo(args: argparse.Namespace) -> int:
    pods = len(StackConfig().pods)
    wall_qps = args.qps / args.time_scale
    say(f"starting the stack: NATS, {pods} simulated pods (time scale {args.time_scale:g}x), 2 collectors, "
        f"{args.pickers} pickers ({args.profile}), autoscaler, 2 Envoys")  # fmt: skip
    t0 = time.monotonic()
    config = StackConfig(pickers=args.pickers, profile=args.profile, time_scale=args.time_scale)
    async with Stack(config) as stack:
        say(f"stack ready in {time.monotonic() - t0:.1f} s (logs: {stack.log_dir})")
        rows: list[Row] = []
        results: dict[str, LoadResult] = {}
        peak: dict[str, float] = {}
        runs = (("InferGate picker", stack.gateway_url), ("Envoy round-robin", stack.round_robin_url))
        for name, url in runs:
            say(f"{name}: {args.qps:g} req/s (H100 time; {wall_qps:.1f}/s wall), {args.duration:g} s ...")
            watcher = asyncio.create_task(watch_autoscaler(stack, peak)) if url == stack.gateway_url else None
            result = await run_load(
                url,
                sharegpt_items(args.seed),
                wall_qps,
                args.duration,
                model=BASE_MODEL,
                stream=True,  # so TTFT is the first token, not the whole response
                drain_timeout_s=120.0 * args.time_scale / 8,
                request_timeout_s=240.0 * args.time_scale / 8,
                seed=args.seed,
            )
            if watcher is not None:
                watcher.cancel()
            results[name] = result
            rows.append(Row(name, h100_equivalent(result.summary(), args.time_scale)))
            await wait_idle(stack)
    table = format_table(rows)
    print("\n" + table + "\n")
    if peak:
        say(autoscaler_line(peak))
    report, plot = write_report(args, table, results, peak)
    say(f"report: {report}")
    if plot is not None:
        say(f"plot:   {plot}")
    return 0


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
                        text = await resp.text()
                except aiohttp.ClientError:
                    continue
                for line in text.splitlines():
                    if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                        busy += int(float(line.rsplit(" ", 1)[1]))
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


def parse_quantity(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


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
    head = ["", "throughput (req/s)", "output tok/s", "p90 NTPOT", "p90 e2e latency", "TTFT p50", "TTFT p90",
            "ok", "errors"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        s = row.summary
        errors = ", ".join(f"{n} x {kind}" for kind, n in sorted(s["errors"].items())) or "0"
        cells = [
            row.name,
            _fmt(s["req_per_s"], ""),
            _fmt(s["output_tok_per_s"], ""),
            _fmt(s["ntpot_p90_s"]),
            _fmt(s["latency_p90_s"]),
            _fmt(s["ttft_p50_s"]),
            _fmt(s["ttft_p90_s"]),
            str(s["ok"]),
            errors,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) == 2:
        a, b = rows[0].summary, rows[1].summary
        ratio = [
            "picker / round-robin",
            _ratio(a["req_per_s"], b["req_per_s"]),
            _ratio(a["output_tok_per_s"], b["output_tok_per_s"]),
            _ratio(a["ntpot_p90_s"], b["ntpot_p90_s"]),
            _ratio(a["latency_p90_s"], b["latency_p90_s"]),
            _ratio(a["ttft_p50_s"], b["ttft_p50_s"]),
            _ratio(a["ttft_p90_s"], b["ttft_p90_s"]),
            "",
            "",
        ]
        lines.append("| " + " | ".join(ratio) + " |")
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
    lines = [
        "# `make demo`: the InferGate picker against Envoy round-robin",
        "",
        f"Command: `infergate-bench demo --time-scale {args.time_scale:g} --qps {args.qps:g} "
        f"--duration {args.duration:g} --pickers {args.pickers} --profile {args.profile} --seed {args.seed}`",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores. Run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Four simulated vLLM pods (Llama-2-7B on an H100, LoRA enabled: about 26 req/s each on ShareGPT),",
        "a ShareGPT-like Poisson load of the base model, streaming. Times are H100-equivalent.",
        "",
        table,
        "",
    ]
    if peak:
        lines += [autoscaler_line(peak), ""]
    if plot is not None:
        lines += [f"![end-to-end latency]({plot.name})", ""]
    report.write_text("\n".join(lines))
    return report, plot


def plot_latency(args: argparse.Namespace, results: dict[str, LoadResult]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, result in results.items():
        ok = [r.ntpot_s for r in result.records if r.ok and not math.isnan(r.ntpot_s)]
        values = sorted(v / args.time_scale * 1e3 for v in ok)
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name)
    ax.set_xlabel("normalized time per output token (ms, H100-equivalent)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("NTPOT distribution, same ShareGPT-like load")
    ax.grid(alpha=0.3)
    ax.legend()
    path = args.out / "demo-ntpot.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
