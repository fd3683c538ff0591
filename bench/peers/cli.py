"""``infergate-bench peers``: install the peers, run every route on every workload, write the report."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.loadgen import percentile, run_load
from bench.peers import install
from bench.peers.measure import CpuMeter, cpu_seconds, loadavg, machine_jiffies, prefix_counters
from bench.peers.pods import PodSetup
from bench.peers.report import Outcome, document
from bench.peers.routes import Route, all_routes, launch
from bench.peers.workloads import TIME_SCALE, Workload, catalogue, sharegpt_source

DEFAULT_OUT = Path("bench/results/peers.md")
FULL = "sharegpt-75,sharegpt-110,prefix-1x,prefix-1.5x,chat-1x,chat-1.5x,lora"
QUICK = "sharegpt-75,prefix-1.5x"


def say(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="infergate-bench peers", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="a short smoke run: two workloads, 1 repetition, 15 s"
    )
    p.add_argument("--workloads", default=None, help=f"comma-separated (default all: {FULL})")
    p.add_argument("--routes", default="", help="comma-separated route names or kinds (default every route)")
    p.add_argument(
        "--no-peers", action="store_true", help="InferGate and Envoy round-robin only; installs nothing"
    )
    p.add_argument("--repetitions", type=int, default=None, help="runs per route and workload (default 2)")
    p.add_argument(
        "--duration", type=float, default=None, help="wall seconds of sending per run (default 60)"
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="wall seconds per simulated H100 second for every workload (default: each workload's own, "
        "ShareGPT and LoRA 10, shared prefix and chat 4)",
    )
    p.add_argument("--max-requests", type=int, default=5000, help="cap per run")
    p.add_argument(
        "--drain",
        type=float,
        default=None,
        help="H100 seconds a run waits for open requests after sending stops; those still open are "
        "cut and reported (default 6)",
    )
    p.add_argument(
        "--max-drain-wall", type=float, default=30.0, help="and at most this many wall seconds (default 30)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="wall seconds InferGate's route is metered at idle before each run (its fixed cost)",
    )
    p.add_argument("--venv", type=Path, default=install.DEFAULT_VENV, help="the peers' virtual environment")
    p.add_argument("--install-only", action="store_true", help="install the peers and stop")
    p.add_argument("--work-dir", type=Path, default=Path(".infergate/peers"), help="logs of every run")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the report (markdown)")
    a = p.parse_args(argv)
    a.workloads = a.workloads or (QUICK if a.quick else FULL)
    a.repetitions = a.repetitions or (1 if a.quick else 2)
    a.duration = a.duration or (15.0 if a.quick else 60.0)
    a.drain = a.drain if a.drain is not None else 6.0
    return a


def h100(summary: dict, scale: float) -> dict:
    """Rates times the time scale, latencies divided by it: the simulated H100s' own figures."""
    out = dict(summary)
    for k, v in summary.items():
        if k in ("req_per_s", "output_tok_per_s"):
            out[k] = v * scale
        elif k.endswith("_s") and k != "wall_s" and isinstance(v, float):
            out[k] = v / scale
    return out


def pick_routes(spec: str, peers: bool) -> list[Route]:
    routes = all_routes(peers)
    if not spec:
        return routes
    wanted = {s.strip() for s in spec.split(",") if s.strip()}
    return [r for r in routes if r.name in wanted or r.kind in wanted or r.name.replace(" ", "-") in wanted]


def censored_ttfts(records, wall_s: float) -> list[float]:
    """Every sent request's TTFT, counting the ones cut at the drain cap too.

    A request cut after its first token keeps its TTFT; one cut before it waited at
    least from its send to the cut, so that lower bound stands in (it is longer than
    the drain cap's remainder, i.e. far beyond any served TTFT). Without this, a route
    whose slow requests were cut would look faster than one that served them.
    """
    out = []
    for r in records:
        if math.isnan(r.sent_at):
            continue
        if not math.isnan(r.ttft_s):
            out.append(r.ttft_s)
        elif not r.ok:
            out.append(max(0.0, wall_s - r.sent_at))
    return out


def scale_of(wl: Workload, args) -> float:
    return args.time_scale or wl.time_scale


def drain_wall(args, scale: float) -> float:
    """Wall seconds a run waits for open requests after its last send: the cap, whichever is first."""
    return min(args.drain * scale, args.max_drain_wall)


async def run_one(route: Route, wl: Workload, args, env, rep: int, run_dir: Path) -> dict:
    scale = scale_of(wl, args)
    setup = PodSetup(time_scale=scale, lora_adapters=wl.lora_adapters, sim_args=wl.sim_args)
    t_launch = time.monotonic()
    async with launch(route, setup, env, run_dir) as running:
        t_ready = time.monotonic()
        idle: dict[str, float] = {}
        if route.kind == "infergate" and args.idle > 0:  # the fixed cost: the route's cores at idle
            idle_meter = CpuMeter(running.pids)
            idle_meter.start()
            t_idle = time.monotonic()
            await asyncio.sleep(args.idle)
            idle = {k: v / (time.monotonic() - t_idle) for k, v in idle_meter.stop().items()}
        before = await prefix_counters(running.pods)
        meter = CpuMeter(running.pids)
        pods = CpuMeter({f"pod-{i}": p for i, p in enumerate(running.pod_pids)})
        me = cpu_seconds(os.getpid())
        meter.start()
        pods.start()
        busy0, total0 = machine_jiffies()
        load0 = loadavg()[0]
        t0 = time.monotonic()
        items = wl.make(args.seed + rep, scale)
        result = await run_load(
            running.url,
            items,
            wl.qps / scale,
            args.duration,
            stream=True,
            max_requests=args.max_requests,
            drain_timeout_s=drain_wall(args, scale),
            request_timeout_s=(args.duration + drain_wall(args, scale)) * 2,
            seed=args.seed + rep,
        )
        wall = time.monotonic() - t0
        used, pod_used = meter.stop(), pods.stop()
        me = cpu_seconds(os.getpid()) - me
        busy1, total1 = machine_jiffies()
        after = await prefix_counters(running.pods)
        t_stop = time.monotonic()
    t_gone = time.monotonic()
    s = h100(result.summary(), scale)
    ttfts = censored_ttfts(result.records, result.wall_s)
    s["ttft_p50_s"], s["ttft_p90_s"] = percentile(ttfts, 50) / scale, percentile(ttfts, 90) / scale
    last_send = max((r.sent_at for r in result.records if not math.isnan(r.sent_at)), default=0.0)
    ncpu = os.cpu_count() or 1
    route_cpu = sum(used.values())
    hits, queries = after.hits - before.hits, after.queries - before.queries
    s.update(
        cpu_by_process=used,
        route_cpu_s=route_cpu,
        cpu_per_1k=route_cpu / s["sent"] * 1000 if s["sent"] else float("nan"),
        ours_share=(route_cpu + sum(pod_used.values()) + me) / (wall * ncpu),
        machine_share=(busy1 - busy0) / max(1, total1 - total0),
        load_start=load0,
        load_end=loadavg()[0],
        prefix_hit_rate=hits / queries if queries > 0 else float("nan"),
        wall_run_s=wall,
        cut=sum(1 for r in result.records if r.error == "cancelled"),
        start_s=t_ready - t_launch,
        drain_s=max(0.0, result.wall_s - max(last_send, 0.0)),
        stop_s=t_gone - t_stop,
        overhead_s=(t_gone - t_launch) - min(args.duration, result.wall_s),
    )
    if idle:  # fixed = the idle rate over the run's wall time; marginal = the rest, per request
        fixed = sum(idle.values()) * wall
        s.update(
            idle_cores=sum(idle.values()),
            idle_by_process=idle,
            fixed_per_1k=fixed / s["sent"] * 1000 if s["sent"] else float("nan"),
            marginal_per_1k=(route_cpu - fixed) / s["sent"] * 1000 if s["sent"] else float("nan"),
        )
    return s


def progress_line(s: dict) -> str:
    return (
        f"  ok {s['ok']}/{s['sent']}, {s['req_per_s']:.1f} req/s, TTFT p90 {s['ttft_p90_s'] * 1000:.0f} ms, "
        f"hit {s['prefix_hit_rate']:.0%}, route CPU {s['cpu_per_1k']:.1f} s/1k req, our CPU "
        f"{s['ours_share']:.0%} of {os.cpu_count()} cores, machine busy {s['machine_share']:.0%}; "
        + (
            f"idle {s['idle_cores']:.3f} cores, marginal {s['marginal_per_1k']:.1f} s/1k; "
            if "idle_cores" in s
            else ""
        )
        + f"start {s['start_s']:.1f} s, drain {s['drain_s']:.1f} s, stop {s['stop_s']:.1f} s, cut {s['cut']}"
    )


def run_row(rep: int, workload: str, route: str, s: dict) -> str:
    load = f"{s['load_start']:.1f} to {s['load_end']:.1f}"
    cells = [str(rep + 1), workload, route, f"{s['ok']}/{s['sent']}", str(s["cut"]),
             f"{s['route_cpu_s']:.1f}", f"{s['ours_share']:.0%}", f"{s['machine_share']:.0%}", load,
             f"{s['start_s']:.1f} / {s['drain_s']:.1f} / {s['stop_s']:.1f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def provenance(env, args, source: str) -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    from shared.natsd import find_binary

    commit = out(["git", "rev-parse", "--short", "HEAD"]) + (
        " (dirty)" if out(["git", "status", "--porcelain"]) else ""
    )
    envoy = out([find_binary("envoy"), "--version"]).split("version:")[-1].strip().split()[0:1]
    prov = {
        "commit": commit,
        "python": install.python_version(),
        "envoy": envoy[0] if envoy else "?",
        "nats-server": out([find_binary("nats-server"), "--version"]),
        "workload data": source,
        "time scale (wall s per H100 s)": (
            f"{args.time_scale:g} for every workload"
            if args.time_scale
            else "per workload: " + ", ".join(f"{k} {v:g}" for k, v in TIME_SCALE.items())
        ),
        "drain cap": f"{args.drain:g} H100 s or {args.max_drain_wall:g} wall s after the last send, "
        "whichever comes first (requests still open are cut and counted)",
        "sending per run": f"{args.duration:g} wall s; {args.repetitions} repetition(s), interleaved",
    }
    if env is not None:
        prov |= {k: env.versions.get(k, "not installed") for k in install.PACKAGES}
    return prov


async def amain(args) -> int:
    env = None
    if not args.no_peers:
        env = install.ensure(args.venv, say=say)
        say("peers: " + ", ".join(f"{k} {v}" for k, v in env.versions.items()))
    if args.install_only:
        return 0 if env is not None and all(env.has(p) for p in install.PACKAGES[:2]) else 1
    source = sharegpt_source(env.sharegpt_path if env else None)
    every = catalogue(env.sharegpt_path if env else None, args.duration)
    workloads = [every[k.strip()] for k in args.workloads.split(",") if k.strip()]
    routes = pick_routes(args.routes, not args.no_peers)
    say(f"workload data: {source}; {len(routes)} routes x {len(workloads)} workloads x {args.repetitions}")
    outcomes = {(w.key, r.name): Outcome(w.key, r.name) for w in workloads for r in routes}
    runs_table = ["| rep | workload | route | ok | cut at drain cap | route CPU s | our CPU share of the "
                  "cores | machine busy | load avg start to end | wall s: start / drain / stop |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    loads = []
    for rep in range(args.repetitions):
        for wl in workloads:
            order = routes[rep % len(routes) :] + routes[: rep % len(routes)]  # interleave: rotate per rep
            for route in order:
                o = outcomes[(wl.key, route.name)]
                run_dir = args.work_dir / f"{rep}-{wl.key}-{route.name.replace(' ', '-')}"
                say(
                    f"rep {rep + 1}: {wl.key} via {route.name} ({wl.qps:g} H100 req/s, time scale "
                    f"{scale_of(wl, args):g})"
                )
                s = None
                for attempt in range(2):  # once more on failure: a port taken meanwhile, a slow start
                    try:
                        s = await run_one(
                            route, wl, args, env, rep, run_dir.with_name(run_dir.name + "-retry" * attempt)
                        )
                        break
                    except Exception as exc:  # a route that fails is reported with its reason
                        o.failure = (
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                        )
                        say(f"  FAILED (attempt {attempt + 1} of 2): {o.failure}")
                if s is None:
                    continue
                o.runs.append(s)
                loads += [s["load_start"], s["load_end"]]
                say(progress_line(s))
                runs_table.append(run_row(rep, wl.key, route.name, s))
    by_wl = {w.key: [outcomes[(w.key, r.name)] for r in routes] for w in workloads}
    machine = {
        "cores": str(os.cpu_count()),
        "cpu": platform.processor() or platform.machine(),
        "load average during the runs (1 min)": (
            f"min {min(loads):.1f}, mean {sum(loads) / len(loads):.1f}, max {max(loads):.1f}"
            if loads
            else "-"
        ),
    }
    settings = [
        "Streaming completions (`stream_options.include_usage`), Poisson arrivals (multi-turn: a trace), "
        "the same requests for every route; times and rates are H100-equivalent (wall / time scale).",
        "Four simulated pods, started fresh for every run (no route inherits a warm cache); "
        "sglang-router runs on SGLang-flavoured pods (it polls /get_load), every other route on vLLM pods.",
        "Routers run with their defaults (ports aside). InferGate = Envoy + 2 pickers (`default` profile) + "
        "one collector per node + nats-server, all counted in its CPU.",
        "route CPU s/1k req = user+system CPU seconds of the route's processes during the run / requests "
        "sent x 1000 (real CPU, not scaled; sent, since the cut requests were routed and partly "
        "streamed). 'IG adv.' > 1 means InferGate is better.",
        "'our CPU share' = the route, the pods and the load generator / (wall x cores); 'machine busy' "
        "includes everything else running on the machine.",
    ]
    titles = {w.key: f"{w.title} ({w.qps:g} H100 req/s, time scale {scale_of(w, args):g})" for w in workloads}
    cmd = "infergate-bench peers " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["peers"] else sys.argv[1:])
    text = document(command=cmd.strip(), provenance=provenance(env, args, source), machine=machine,
                    settings=settings, by_workload=by_wl, titles=titles, runs_table=runs_table)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    say(f"report: {args.out}")
    failed = [o for o in outcomes.values() if not o.runs]
    return 1 if any(o.route == "InferGate" for o in failed) else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return asyncio.run(amain(args))
