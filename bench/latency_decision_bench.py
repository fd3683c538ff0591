"""Decision cost of the ``predicted-latency`` profile (SLO routing on learnt TTFT/TPOT) at 1,000 endpoints.

Run: ``.venv/bin/python -m bench.latency_decision_bench [--sizes 10,100,1000] [--decisions N] [--repeat R]``

Same pool as ``bench.picker_decision_bench`` (snapshots re-published every 50 ms of
virtual time, stale endpoints, shared prefixes, LoRA adapters), with a third each of
H100, A100 and L40S endpoints (accelerator and price in the snapshots), requests that
carry ``x-slo-ttft-ms`` 500 / ``x-slo-tpot-ms`` 50 (a quarter with no SLO headers: the
profile's defaults), and completions that carry an outcome, so the predictor is trained
(``min_samples`` reached before timing) and keeps learning while decisions are timed.
Timed: ``Profile.decide`` (wall and the thread's CPU time); reported separately: the
learning cost per request (``on_assigned`` + ``on_completed`` with the predictor
attached). ``default`` runs first in the same process and every row gives its CPU p99 as
a ratio of ``default``'s: on a shared machine the absolute numbers move with the load,
the ratio much less. The budget is p99 <= 1 ms per decision at 1,000 endpoints.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import time
from collections import deque

import msgspec

from bench.picker_decision_bench import make_request, make_snapshot
from picker.scheduling import build_profile

TICK = 0.001
SCRAPE = 0.05
ACCELS = [("h100-80gb", 3.0, 1.0), ("a100-80gb", 1.8, 1.8), ("l40s-48gb", 1.0, 3.5)]  # name, $/h, slowness


def snapshot(rng: random.Random, i: int, now: float, stale: bool):
    s = make_snapshot(rng, i, now, stale)
    name, cost, _ = ACCELS[i % 3]
    return msgspec.structs.replace(s, accelerator=name, cost_per_hour=cost)


def outcome(rng: random.Random, i: int, prompt: int) -> tuple[float, float]:
    """A plausible (TTFT s, latency s) for 100 output tokens on endpoint i (any law: cost is measured)."""
    slow = ACCELS[i % 3][2]
    ttft = slow * (0.02 + prompt * 4e-5) * rng.uniform(0.8, 1.3)
    return ttft, ttft + 99 * slow * 0.012 * rng.uniform(0.9, 1.1)


def run(profile: str, n: int, decisions: int, seed: int = 7) -> dict[str, float]:
    rng = random.Random(seed)
    prof = build_profile(profile, rng=random.Random(seed))
    state = prof.state
    now = 1_000.0
    stale = set(rng.sample(range(n), max(1, n // 50)))
    for i in range(n):
        state.on_snapshot(snapshot(rng, i, now, i in stale), now)
    index = {f"10.{i // 250}.{i % 250}.1:8000": i for i in range(n)}
    prefixes = [[rng.getrandbits(62) for _ in range(rng.randint(4, 24))] for _ in range(64)]
    warmup = max(300, min(500, decisions // 4))
    gc.collect()
    gcs = _GcClock()
    gc.callbacks.append(gcs)
    try:
        return _loop(prof, state, rng, n, decisions, warmup, stale, index, prefixes, gcs)
    finally:
        gc.callbacks.remove(gcs)


class _GcClock:
    """Garbage collections while timing: how many and how long, inside decisions and in all.

    A collection runs wherever an allocation crosses the threshold; a decision that
    allocates less than the snapshot stream around it takes more of them (the pause is
    the whole process's, wherever it lands), so the table reports both.
    """

    def __init__(self) -> None:
        self.timing = False
        self.inside = False
        self.n_inside = 0
        self.ns_inside = 0
        self.ns_all = 0
        self._t0 = 0

    def __call__(self, phase: str, info: dict) -> None:
        if not self.timing:
            return
        if phase == "start":
            self._t0 = time.perf_counter_ns()
            return
        dt = time.perf_counter_ns() - self._t0
        self.ns_all += dt
        if self.inside:
            self.n_inside += 1
            self.ns_inside += dt


def _loop(prof, state, rng, n, decisions, warmup, stale, index, prefixes, gcs: _GcClock) -> dict[str, float]:
    now = 1_000.0
    live: deque = deque()
    cpu: list[int] = []
    lat: list[int] = []
    learn: list[int] = []
    next_scrape = 0
    per_tick = max(1, round(n * TICK / SCRAPE))
    for k in range(decisions + warmup):
        gcs.timing = k >= warmup
        now += TICK
        for _ in range(per_tick):
            i = next_scrape % n
            next_scrape += 1
            state.on_snapshot(snapshot(rng, i, now, i in stale), now)
        req = make_request(rng, k, prefixes)
        if rng.random() < 0.75:
            req.slo_ttft_ms, req.slo_tpot_ms = 500.0, 50.0
        gcs.inside = True
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        d = prof.decide(req, now)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        gcs.inside = False
        l0 = time.thread_time_ns()
        if d.endpoints:
            state.on_assigned(req, d.endpoints[0], now, replica="me")
            live.append((req, index[d.endpoints[0]]))
        while len(live) > 400:
            r, i = live.popleft()
            ttft, e2e = outcome(rng, i, r.prompt_tokens)
            state.on_completed(
                r.request_id, now, replica="me", status=200, ttft_s=ttft, latency_s=e2e, output_tokens=100
            )
        l1 = time.thread_time_ns()
        if k >= warmup:
            cpu.append(c1 - c0)
            lat.append(t1 - t0)
            learn.append(l1 - l0)
    cpu.sort()
    lat.sort()
    learn.sort()
    pred = next(iter(getattr(state, "observers", [])), None)
    return {
        "cpu_p50": cpu[len(cpu) // 2] / 1e3,
        "cpu_p99": cpu[int(len(cpu) * 0.99)] / 1e3,
        "p50": lat[len(lat) // 2] / 1e3,
        "p99": lat[int(len(lat) * 0.99)] / 1e3,
        "learn_mean": sum(learn) / len(learn) / 1e3,
        "ready": bool(pred.ready) if pred is not None else None,
        # per 1,000 timed decisions: collections inside them, and GC ms inside and in all
        "gc_n_in": gcs.n_inside * 1e3 / len(cpu),
        "gc_ms_in": gcs.ns_inside / 1e3 / len(cpu),
        "gc_ms_all": gcs.ns_all / 1e3 / len(cpu),
    }


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    k = len(xs)
    return xs[k // 2] if k % 2 else (xs[k // 2 - 1] + xs[k // 2]) / 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--profiles", default="default,predicted-latency,predicted-latency-fast,gie-v1")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="run every profile R times, in turn, and print the median of each figure over the runs "
        "(a shared machine's interference moves single runs by 1.5x)",
    )
    args = ap.parse_args(argv)
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rep = max(1, args.repeat)
    note = f" (median of {rep} runs)" if rep > 1 else ""
    print(
        f"| endpoints | profile | CPU p50 / p99 (µs){note} | wall p50 / p99 (µs) | CPU p99 / default's "
        "| learning per request (µs, CPU) | GC per 1,000 decisions: collections inside / ms inside / ms all |"
    )
    print("|---|---|---|---|---|---|---|")
    profiles = args.profiles.split(",")
    if "default" in profiles:  # measured first, so every row can carry its ratio
        profiles = ["default"] + [p for p in profiles if p != "default"]
    for n in [int(x) for x in args.sizes.split(",")]:
        runs: dict[str, list[dict[str, float]]] = {p: [] for p in profiles}
        for _ in range(rep):  # in turn, so every profile sees the same interference
            for prof in profiles:
                runs[prof].append(run(prof, n, args.decisions))
        base = None
        for prof in profiles:
            rs = runs[prof]
            keys = ("cpu_p50", "cpu_p99", "p50", "p99", "learn_mean", "gc_n_in", "gc_ms_in", "gc_ms_all")
            r = {k: _median([x[k] for x in rs]) for k in keys}
            if prof == "default":
                base = r["cpu_p99"]
            warm = "" if all(x["ready"] in (True, None) for x in rs) else " (predictor NOT warm)"
            cpu = f"{r['cpu_p50']:.0f} / {r['cpu_p99']:.0f}"
            wall = f"{r['p50']:.0f} / {r['p99']:.0f}"
            ratio = f"{r['cpu_p99'] / base:.2f}x" if base else "—"
            g = f"{r['gc_n_in']:.0f} / {r['gc_ms_in']:.0f} / {r['gc_ms_all']:.0f}"
            print(
                f"| {n} | {prof}{warm} | {cpu} | {wall} | {ratio} | {r['learn_mean']:.1f} | {g} |", flush=True
            )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
