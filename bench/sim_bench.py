"""How fast is the simulator? ``.venv/bin/python -m bench.sim_bench``

1. Real time: one ``infergate-sim serve`` process with 10 pods (a subprocess), loaded
   from this process over HTTP with short requests (prompt 16 tokens, max_tokens 4).
   Prints the completed requests/s and the server process's CPU time per request, i.e.
   the requests/s one core of simulator can serve.
2. Virtual time: the engine alone (no HTTP), ShareGPT-like at 20 req/s and under a 2x
   overload, in steps/s and simulated requests/s.
3. The ``/metrics`` page: microseconds per render with 2,000 requests in the histograms,
   re-rendering the histogram block every time against the default cached block (the
   ratio says what the cache saves at a 20 Hz scrape).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time

import aiohttp

from sim.calibrate import run_poisson, saturation
from sim.engine import EngineConfig
from sim.workloads import ShareGPTLike

MODEL = "meta-llama/Llama-2-7b-hf"


def _free_port_block(n: int) -> int:
    for base in range(21000, 60000, 97):
        ok = True
        for p in range(base, base + n + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks  # utime + stime


async def _load(urls: list[str], duration: float, concurrency: int) -> tuple[int, int, list[float]]:
    ok = err = 0
    lat: list[float] = []
    prompt = "hello world, this is a short prompt of sixteen tokens.."[:64]
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4}
    stop_at = time.perf_counter() + duration
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker(i: int) -> None:
            nonlocal ok, err
            j = i
            while time.perf_counter() < stop_at:
                url = urls[j % len(urls)]
                j += 1
                t0 = time.perf_counter()
                try:
                    async with s.post(url, json=body) as r:
                        await r.read()
                        if r.status == 200:
                            ok += 1
                            lat.append(time.perf_counter() - t0)
                        else:
                            err += 1
                except aiohttp.ClientError:
                    err += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return ok, err, lat


def real_time(pods: int, duration: float, concurrency: int, time_scale: float) -> dict:
    base = _free_port_block(pods + 1)
    cmd = [
        sys.executable,
        "-m",
        "sim",
        "serve",
        "--pods",
        str(pods),
        "--base-port",
        str(base),
        "--ops-port",
        str(base + pods),
        "--time-scale",
        str(time_scale),
        "--log-level",
        "WARNING",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        urls = [f"http://127.0.0.1:{base + i}/v1/completions" for i in range(pods)]
        deadline = time.time() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", base + pods - 1), timeout=0.2):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        "simulator did not start: " + proc.stderr.read().decode()[-2000:]
                    ) from None
                time.sleep(0.1)
        asyncio.run(_load(urls, 1.0, concurrency))  # warm-up
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        ok, err, lat = asyncio.run(_load(urls, duration, concurrency))
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat.sort()
    return {
        "pods": pods,
        "time_scale": time_scale,
        "concurrency": concurrency,
        "duration_s": wall,
        "ok": ok,
        "errors": err,
        "req_per_s": ok / wall,
        "server_cpu_s": cpu,
        "server_cpu_util": cpu / wall,
        "req_per_cpu_s": ok / cpu if cpu else float("nan"),
        "p50_ms": 1e3 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1e3 * lat[int(len(lat) * 0.99)] if lat else float("nan"),
    }


def virtual_time() -> dict:
    r = run_poisson(EngineConfig(), ShareGPTLike(random.Random(1)), 20.0, n_requests=20000, record_itl=False)
    s = saturation(EngineConfig())
    return {
        "steady_steps": r.steps,
        "steady_wall_s": r.wall_s,
        "steady_steps_per_s": r.steps / r.wall_s,
        "steady_req_per_s": len(r.requests) / r.wall_s,
        "steady_virtual_s": r.end,
        "overload_steps_per_s": s["steps"] / s["wall_s"],
        "overload_req_per_s": s["req_per_s"] * 180.0 / s["wall_s"],
    }


def page_render(renders: int = 500) -> dict:
    from sim.pod import PodSpec, SimPod

    pod = SimPod(PodSpec())
    for i in range(2000):  # populate the histograms
        pod.metrics.observe_request(0.01 * (i % 50), 1.0 + i % 7, 0.001, 0.02, 0.9, 100 + i, 50, 50, "length")
    out = {"bytes": len(pod.render_metrics())}
    for name, refresh_s in (("cached_us", 1.0), ("full_us", 0.0)):
        pod.metrics.refresh_s = refresh_s
        pod.render_metrics()
        t0 = time.perf_counter()
        for _ in range(renders):
            pod.render_metrics()
        out[name] = 1e6 * (time.perf_counter() - t0) / renders
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--time-scale", type=float, default=0.1)
    args = ap.parse_args(argv)
    v = virtual_time()
    print("## Engine alone, virtual time (EngineConfig defaults)")
    print(
        f"- ShareGPT-like at 20 req/s, 20,000 requests: {v['steady_steps']} steps "
        f"in {v['steady_wall_s']:.2f} s "
        f"= {v['steady_steps_per_s']:,.0f} steps/s, {v['steady_req_per_s']:,.0f} requests/s "
        f"({v['steady_virtual_s']:.0f} s simulated)"
    )
    print(
        f"- ShareGPT-like 2x overload (256 running): {v['overload_steps_per_s']:,.0f} steps/s, "
        f"{v['overload_req_per_s']:,.0f} completed requests/s"
    )
    m = page_render()
    print(
        f"\n## /metrics page ({m['bytes']:,} bytes, 2,000 requests observed)\n"
        f"- {m['cached_us']:,.0f} us per render with the histogram block cached, "
        f"{m['full_us']:,.0f} us re-rendering it ({m['full_us'] / m['cached_us']:.1f}x)"
    )
    r = real_time(args.pods, args.duration, args.concurrency, args.time_scale)
    print(
        f"\n## Real time: {r['pods']} pods in one process, time-scale {r['time_scale']}, "
        f"closed loop with {r['concurrency']} connections from another process, prompt 16 / max_tokens 4"
    )
    print(
        f"- completed {r['ok']} requests ({r['errors']} errors) in {r['duration_s']:.1f} s "
        f"= {r['req_per_s']:,.0f} requests/s; latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
    )
    print(
        f"- server CPU {r['server_cpu_s']:.2f} s ({100 * r['server_cpu_util']:.0f}% of one core) "
        f"= {r['req_per_cpu_s']:,.0f} requests per CPU-second"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
