"""Decision latency of every scheduling profile at 10, 100 and 1,000 endpoints.

Run: ``.venv/bin/python -m bench.picker_decision_bench [--decisions N] [--sizes 10,100,1000]``

The pool is kept realistic while decisions are timed: snapshots with varied queues,
KV use and LoRA adapters are re-published every 50 ms of virtual time (1,000 requests/s,
so each decision sees ~n/50 fresh snapshots, digested by ``on_snapshot`` outside the
timed region), a few endpoints have stale metrics, every decision is followed by
``on_assigned`` (feeding the in-flight tracker and the prefix index) and earlier
requests complete. Requests carry 8-32 prefix blocks drawn from shared system prompts
so the prefix index has real hits. Only the decision is timed (``Profile.decide``: the
state's clock, admission, then ``schedule()``); ``on_snapshot`` and ``on_assigned``
costs are reported separately. The ``random`` profile, measured in the
same run, is the baseline of the ratio column.

Each decision is timed twice: wall clock (``perf_counter_ns``) and the thread's CPU
time (``thread_time_ns``). On a shared machine the wall-clock tail includes time the
process spent descheduled by other work; the CPU time is the decision's own cost. The
load average is printed so the two can be read in context.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import time
from collections import deque

from picker.scheduling import RequestInfo, build_profile, load_config
from shared.schemas import EndpointSnapshot, LoraState

ADAPTERS = [f"adapter-{i}" for i in range(8)]
BASE = "llama-2-7b"
TICK = 0.001  # 1,000 requests/s of virtual time
SCRAPE = 0.05


def make_snapshot(rng: random.Random, i: int, now: float, stale: bool) -> EndpointSnapshot:
    running = rng.sample(ADAPTERS, rng.randint(0, 4))
    return EndpointSnapshot(
        namespace="default",
        pool="pool",
        pod=f"vllm-{i}",
        address=f"10.{i // 250}.{i % 250}.1:8000",
        model=BASE,
        waiting=rng.choice([0, 0, 1, 2, 3, 5, 8, 12]),
        running=rng.randint(0, 64),
        kv_usage=rng.random() * 0.95,
        kv_capacity_tokens=119_408,
        block_size=16,
        lora=LoraState(running=running, waiting=rng.sample(ADAPTERS, rng.randint(0, 1)), max_lora=4),
        ts=now - (1.0 if stale else rng.random() * 0.04),
    )


def make_request(rng: random.Random, k: int, prefixes: list[list[int]]) -> RequestInfo:
    base = prefixes[int(rng.paretovariate(1.2)) % len(prefixes)]
    n = rng.randint(8, 32)
    hashes = base[: min(n, len(base))] + [rng.getrandbits(62) for _ in range(max(0, n - len(base)))]
    target = BASE if rng.random() < 0.7 else rng.choice(ADAPTERS)
    return RequestInfo(
        request_id=f"r{k}",
        model=target,
        target_model=target,
        criticality=rng.choice(["Critical", "Standard", "Standard", "Sheddable"]),
        prompt_tokens=len(hashes) * 16 + rng.randint(0, 15),
        prefix_hashes=hashes,
        expected_output_tokens=rng.choice([0, 64, 128, 256, 512]),
    )


def run(profile: str, n: int, decisions: int, seed: int = 7) -> dict[str, float]:
    rng = random.Random(seed)
    prof = build_profile(profile, rng=random.Random(seed))
    state = prof.state
    now = 1_000.0
    stale = set(rng.sample(range(n), max(1, n // 50)))
    for i in range(n):
        state.on_snapshot(make_snapshot(rng, i, now, i in stale), now)
    prefixes = [[rng.getrandbits(62) for _ in range(rng.randint(4, 24))] for _ in range(64)]
    live: deque[str] = deque()
    warmup = min(200, decisions // 5)
    lat: list[int] = []
    cpu: list[int] = []
    snap_ns: list[int] = []
    assign_ns: list[int] = []
    next_scrape = 0
    per_tick = max(1, round(n * TICK / SCRAPE))  # snapshots due per decision
    gc.collect()
    for k in range(decisions + warmup):
        now += TICK
        t0 = time.perf_counter_ns()
        for _ in range(per_tick):  # the collectors' stream of snapshots
            i = next_scrape % n
            next_scrape += 1
            state.on_snapshot(make_snapshot(rng, i, now, i in stale), now)
        t1 = time.perf_counter_ns()
        req = make_request(rng, k, prefixes)
        c2 = time.thread_time_ns()
        t2 = time.perf_counter_ns()
        d = prof.decide(req, now)
        t3 = time.perf_counter_ns()
        c3 = time.thread_time_ns()
        if d.endpoints:
            state.on_assigned(req, d.endpoints[0], now)
            live.append(req.request_id)
        t4 = time.perf_counter_ns()
        while len(live) > 400:  # ~400 requests in flight across the pool
            state.on_completed(live.popleft(), now)
        if k >= warmup:
            lat.append(t3 - t2)
            cpu.append(c3 - c2)
            snap_ns.append((t1 - t0) // per_tick)
            assign_ns.append(t4 - t3)
    lat.sort()
    cpu.sort()
    return {
        "p50": lat[len(lat) // 2] / 1000,
        "p99": lat[int(len(lat) * 0.99)] / 1000,
        "cpu_p50": cpu[len(cpu) // 2] / 1000,
        "cpu_p99": cpu[int(len(cpu) * 0.99)] / 1000,
        "mean": statistics.fmean(lat) / 1000,
        "snapshot": statistics.fmean(snap_ns) / 1000,
        "assign": statistics.fmean(assign_ns) / 1000,
    }


def interleaved(n: int, profiles: list[str], blocks: int = 5, per_block: int = 200) -> dict[str, list[int]]:
    """CPU time of a decision per profile, timed in alternating blocks on the same pool state.

    On a shared machine, interference changes from one second to the next; alternating
    blocks of decisions between profiles exposes them all to the same interference, so
    their ratios are steadier than those of successive runs.
    """
    setups = {}
    for name in profiles:
        rng = random.Random(1)
        prof = build_profile(name, rng=random.Random(1))
        for i in range(n):
            prof.state.on_snapshot(make_snapshot(rng, i, 1000.0, False), 1000.0)
        prefixes = [[rng.getrandbits(62) for _ in range(rng.randint(4, 24))] for _ in range(64)]
        reqs = [make_request(rng, k, prefixes) for k in range(2000 + blocks * per_block)]
        for r in reqs[:2000]:
            d = prof.decide(r, 1000.0)
            if d.endpoints:
                prof.state.on_assigned(r, d.endpoints[0], 1000.0)
        setups[name] = (prof, reqs[2000:])
    out: dict[str, list[int]] = {name: [] for name in profiles}
    for b in range(blocks):
        for name, (prof, reqs) in setups.items():
            for r in reqs[b * per_block : (b + 1) * per_block]:
                t0 = time.thread_time_ns()
                prof.decide(r, 1000.0)
                out[name].append(time.thread_time_ns() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=2000, help="timed decisions per profile and size")
    ap.add_argument("--sizes", default="10,100,1000", help="comma-separated endpoint counts")
    ap.add_argument("--profiles", default=",".join(load_config().names()), help="comma-separated profiles")
    ap.add_argument(
        "--interleaved",
        type=int,
        default=0,
        metavar="N",
        help="instead: time the profiles in alternating blocks on one N-endpoint pool (CPU time)",
    )
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    profiles = args.profiles.split(",")
    if "random" not in profiles:
        profiles.append("random")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus, "
        f"load average {load}, decisions per cell: {args.decisions}"
    )
    if args.interleaved:
        for name, v in interleaved(args.interleaved, profiles).items():
            v.sort()
            print(
                f"{args.interleaved:>9} {name:<14} cpu p50 {v[len(v) // 2] / 1000:8.1f}  "
                f"p90 {v[int(len(v) * 0.9)] / 1000:8.1f}  p99 {v[int(len(v) * 0.99)] / 1000:8.1f} us"
            )
        return 0
    print(
        f"{'endpoints':>9} {'profile':<14} {'cpu p50':>8} {'cpu p99':>8} {'wall p50':>9} {'wall p99':>9} "
        f"{'cpu p99/random':>14} {'on_snapshot':>11} {'on_assigned':>11}   (microseconds)"
    )
    for n in sizes:
        results = {p: run(p, n, args.decisions) for p in profiles}
        base = results["random"]["cpu_p99"]
        for p in profiles:
            r = results[p]
            print(
                f"{n:>9} {p:<14} {r['cpu_p50']:>8.1f} {r['cpu_p99']:>8.1f} {r['p50']:>9.1f} {r['p99']:>9.1f} "
                f"{r['cpu_p99'] / base:>14.2f} {r['snapshot']:>11.1f} {r['assign']:>11.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
