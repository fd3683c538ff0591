"""InferGate's own CPU per request on the whole path, split into a fixed and a marginal cost.

``python -m bench.cost_bench [--qps 8] [--duration 30] [--idle 20] [--max-tokens 128]``

One real stack (:class:`bench.stack.Stack`: nats-server, four simulated pods, one
collector per node scraping at 20 Hz, two pickers, the picker-consulting Envoy and a
plain round-robin Envoy over the same pods), then three phases:

1. **idle**: nothing is sent for ``--idle`` seconds; each process's CPU seconds / wall
   seconds is its **fixed cost** in cores (the collectors' scraping, the pickers' view
   and sharing, nats-server, the Envoys' timers);
2. **load**: Poisson streamed completions (``stream_options.include_usage``) at ``--qps``
   for ``--duration`` seconds through InferGate, then the same requests through the
   round-robin Envoy. A process's **marginal cost** per 1,000 requests is its CPU during
   the phase minus its idle rate times the phase's wall time, over the completed requests;
3. **latency**: requests one at a time, alternating InferGate and round-robin, a short
   prompt and few tokens; the **ext_proc step's added latency** is the difference of the
   two routes' TTFT p50 (the same Envoy binary and pods, only ext_proc differs).

CPU seconds come from ``/proc/<pid>/stat`` (user + system of the process tree), so they
survive a shared machine far better than wall-clock figures; the load average is printed
next to them. ``--response-body-mode`` picks the ext_proc response processing of the
InferGate Envoy, to measure a mode next to another on the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench.loadgen import LoadItem, percentile, run_load
from bench.peers.measure import CpuMeter, loadavg
from bench.stack import BASE_MODEL, Stack, StackConfig
from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.process import EnvoyProcess
from shared.tokens import text_for_tokens

IG_PROCS = ("envoy", "picker-0", "picker-1", "collector-node-a", "collector-node-b", "nats-server")


@dataclass
class Phase:
    name: str
    wall_s: float
    cpu_s: dict[str, float]
    ok: int = 0
    sent: int = 0
    output_tokens: int = 0
    ext_proc_msgs: float = 0.0  # Envoy -> picker messages during the phase (Envoy's own counter)


@dataclass
class Report:
    args: dict
    idle: Phase | None = None
    load_ig: Phase | None = None
    load_rr: Phase | None = None
    ttft_ig_ms: list[float] = field(default_factory=list)
    ttft_rr_ms: list[float] = field(default_factory=list)
    loadavg: list[tuple[str, float]] = field(default_factory=list)

    # -- derived ---------------------------------------------------------------------------
    def fixed_cores(self) -> dict[str, float]:
        assert self.idle is not None
        return {k: v / self.idle.wall_s for k, v in self.idle.cpu_s.items()}

    def marginal_per_1k(self, phase: Phase) -> dict[str, float]:
        fixed = self.fixed_cores()
        n = max(1, phase.ok)
        return {k: (v - fixed.get(k, 0.0) * phase.wall_s) / n * 1000 for k, v in phase.cpu_s.items()}

    def total_per_1k(self, phase: Phase) -> dict[str, float]:
        n = max(1, phase.ok)
        return {k: v / n * 1000 for k, v in phase.cpu_s.items()}

    def added_ms(self) -> float:
        return percentile(self.ttft_ig_ms, 50) - percentile(self.ttft_rr_ms, 50)


def items(n: int, prompt_tokens: int, max_tokens: int, seed: int) -> list[LoadItem]:
    """Distinct prompts (no shared prefix), a fixed output length: a known chunk count."""
    rng = random.Random(seed)
    return [LoadItem(text_for_tokens(prompt_tokens, seed=rng.getrandbits(64)), max_tokens) for _ in range(n)]


async def ext_proc_sent(envoy: EnvoyProcess | None) -> float:
    """Envoy's ``ext_proc...stream_msgs_sent`` summed (0 without an ext_proc filter)."""
    if envoy is None:
        return 0.0
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{envoy.admin_url}/stats?filter=ext_proc.*stream_msgs_sent") as resp,
    ):
        text = await resp.text()
    return sum(float(line.rsplit(":", 1)[1]) for line in text.splitlines() if ":" in line)


async def _load(
    url: str, work: list[LoadItem], qps: float, duration: float, meter: CpuMeter, envoy: EnvoyProcess | None
) -> Phase:
    msgs0 = await ext_proc_sent(envoy)
    meter.start()
    t0 = time.monotonic()
    res = await run_load(url, list(work), qps, duration, stream=True, model=BASE_MODEL, seed=1)
    wall = time.monotonic() - t0
    cpu = meter.stop()
    s = res.summary()
    ok = [r for r in res.records if r.ok]
    msgs = await ext_proc_sent(envoy) - msgs0
    return Phase(
        "load", wall, dict(cpu), int(s["ok"]), int(s["sent"]), sum(r.output_tokens for r in ok), msgs
    )


async def _ttft_probe(urls: dict[str, str], rounds: int, max_tokens: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in urls}
    prompt = text_for_tokens(32, seed=7)
    for _ in range(rounds):
        for name, url in urls.items():
            res = await run_load(
                url, [LoadItem(prompt, max_tokens, arrival=0.0)], 0, 1.0, stream=True, model=BASE_MODEL
            )
            r = res.records[0]
            if r.ok:
                out[name].append(r.ttft_s * 1000)
    return out


async def measure(args: argparse.Namespace) -> Report:
    rep = Report(args=vars(args).copy())
    cfg = StackConfig(pickers=2, autoscaler=False, round_robin_envoy=True, time_scale=args.time_scale)
    async with Stack(cfg) as stack:
        envoy = stack.envoy
        if args.response_body_mode:
            # The same stack, the gateway Envoy rebuilt with another response processing mode.
            await stack.envoy.stop()
            opts = replace(stack.picker_envoy_options(), response_body_mode=args.response_body_mode)
            envoy = EnvoyProcess(build_bootstrap(opts))
            await envoy.start(30)
            stack.envoy = envoy
        pids = {"envoy": envoy.proc.pid, "nats-server": stack.nats.proc.pid}
        pids |= {p.name: p.process.proc.pid for p in stack.pickers}
        pids |= {f"collector-{n}": c.proc.pid for n, c in stack.collectors.items()}
        rr_pids = {"rr-envoy": stack.round_robin.proc.pid}
        # warm up both routes (connections, the pickers' first decisions)
        warm = items(8, 64, 8, seed=99)
        await run_load(stack.gateway_url, warm, 20, 1.0, stream=True, model=BASE_MODEL)
        await run_load(stack.round_robin_url, warm, 20, 1.0, stream=True, model=BASE_MODEL)
        await asyncio.sleep(2.0)

        rep.loadavg.append(("idle start", loadavg()[0]))
        meter = CpuMeter({**pids, **rr_pids})
        meter.start()
        t0 = time.monotonic()
        await asyncio.sleep(args.idle)
        rep.idle = Phase("idle", time.monotonic() - t0, dict(meter.stop()))

        work = items(int(args.qps * args.duration * 2) + 10, args.prompt_tokens, args.max_tokens, seed=3)
        rep.loadavg.append(("InferGate load start", loadavg()[0]))
        rep.load_ig = await _load(
            stack.gateway_url, work, args.qps, args.duration, CpuMeter({**pids, **rr_pids}), envoy
        )
        await asyncio.sleep(2.0)
        rep.loadavg.append(("round-robin load start", loadavg()[0]))
        rep.load_rr = await _load(
            stack.round_robin_url, work, args.qps, args.duration, CpuMeter({**pids, **rr_pids}), None
        )
        rep.loadavg.append(("latency probe start", loadavg()[0]))
        probe = await _ttft_probe(
            {"ig": stack.gateway_url, "rr": stack.round_robin_url}, args.probe_rounds, args.probe_tokens
        )
        rep.ttft_ig_ms, rep.ttft_rr_ms = probe["ig"], probe["rr"]
        rep.loadavg.append(("end", loadavg()[0]))
    return rep


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False)
        return out.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return ""


def format_report(rep: Report) -> str:
    assert rep.idle and rep.load_ig and rep.load_rr
    fixed = rep.fixed_cores()
    m_ig = rep.marginal_per_1k(rep.load_ig)
    t_ig = rep.total_per_1k(rep.load_ig)
    m_rr = rep.marginal_per_1k(rep.load_rr)
    t_rr = rep.total_per_1k(rep.load_rr)
    a = rep.args
    msgs_per_req = rep.load_ig.ext_proc_msgs / max(1, rep.load_ig.ok)
    per_msg_us = sum(m_ig.get(k, 0) for k in IG_PROCS) / 1000 / max(1.0, msgs_per_req) * 1e6
    lines = [
        f"commit {_commit()}; python {platform.python_version()}; {os.cpu_count()} cores (shared); "
        f"response body mode {a.get('response_body_mode') or 'default'}; time scale {a['time_scale']}",
        f"load: {rep.load_ig.ok}/{rep.load_ig.sent} ok through InferGate in {rep.load_ig.wall_s:.1f} s, "
        f"{rep.load_rr.ok}/{rep.load_rr.sent} through round-robin in {rep.load_rr.wall_s:.1f} s; "
        f"{rep.load_ig.output_tokens / max(1, rep.load_ig.ok):.0f} output tokens (SSE events) per request",
        f"ext_proc messages Envoy -> picker per request: {msgs_per_req:.1f}"
        f" (InferGate marginal: {per_msg_us:.0f} us of CPU per message, all processes)",
        "load average (1 min): " + ", ".join(f"{k} {v:.1f}" for k, v in rep.loadavg),
        "",
        "| process | fixed (cores at idle) | InferGate marginal CPU s / 1k req "
        "| InferGate total CPU s / 1k req |",
        "|---|---|---|---|",
    ]
    for k in IG_PROCS:
        lines.append(f"| {k} | {fixed.get(k, 0):.4f} | {m_ig.get(k, 0):.1f} | {t_ig.get(k, 0):.1f} |")
    lines.append(
        f"| **InferGate (sum)** | **{sum(fixed.get(k, 0) for k in IG_PROCS):.4f}** | "
        f"**{sum(m_ig.get(k, 0) for k in IG_PROCS):.1f}** | **{sum(t_ig.get(k, 0) for k in IG_PROCS):.1f}** |"
    )
    lines.append(
        f"| round-robin Envoy (its own run) | {fixed.get('rr-envoy', 0):.4f} | "
        f"{m_rr.get('rr-envoy', 0):.1f} | {t_rr.get('rr-envoy', 0):.1f} |"
    )
    lines += [
        "",
        f"TTFT one request at a time ({len(rep.ttft_ig_ms)} / {len(rep.ttft_rr_ms)} samples): "
        f"InferGate p50 {percentile(rep.ttft_ig_ms, 50):.2f} ms, round-robin p50 "
        f"{percentile(rep.ttft_rr_ms, 50):.2f} ms: **ext_proc adds {rep.added_ms():.2f} ms p50**",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cost_bench", description=__doc__.splitlines()[0])
    p.add_argument("--qps", type=float, default=8.0, help="Poisson arrivals per wall second")
    p.add_argument("--duration", type=float, default=30.0, help="wall seconds of sending per route")
    p.add_argument("--idle", type=float, default=20.0, help="wall seconds of the idle phase")
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens (SSE chunks) per request")
    p.add_argument("--time-scale", type=float, default=1.0, help="the sims' wall seconds per H100 second")
    p.add_argument("--probe-rounds", type=int, default=40, help="latency probe: requests per route")
    p.add_argument("--probe-tokens", type=int, default=4)
    p.add_argument(
        "--response-body-mode",
        default="",
        help="the InferGate Envoy's ext_proc response body mode (default: the generator's)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rep = asyncio.run(measure(args))
    print(format_report(rep))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(rep), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
