"""The demo's mixed-priority phase: flow control through Envoy against round-robin, over capacity.

A fresh stack whose pickers run with flow control on (``--flow-control on``: utilization
detector, round-robin fairness, FCFS). Two bands arrive together at ``--priority-load``
times the 4 pods' measured capacity: 30% on the base model (its InferenceModel is
Critical: priority 100) and 70% as ``batch`` (Sheddable: priority -100, rewritten to the
base model). Through the picker the top band is served first and the batch band waits in
the picker (429 ``rejected-ttl-expired`` past the TTL); through round-robin both share the
pods' FCFS queues (round-robin sends ``batch`` as the base model: it has no rewrite).

**The workload is long prompts with short answers** (1,000-3,000 prompt tokens, 8-24
output tokens), not ShareGPT: over capacity a pod's queue must build within the phase's
few simulated seconds. With ShareGPT lengths (~220 output tokens, ~10 s per request at
full batch) a pod absorbs the excess into its running batch for tens of H100 seconds
before anything waits (measured: 26 req/s per pod never queues in a 60-s window), which
at the streaming time scale is many wall minutes; with prefill-bound requests the queue
builds in the first second. ``python -m bench.demo_flow --calibrate`` measures the
simulated pod's saturation on this workload in virtual time (the same engine the pods
run): throughput levels off at ~14.5 req/s per pod (:data:`POD_CAPACITY_QPS`).

The phase is short and its drain bounded: 10 H100 seconds of sending per route (40 s
wall at time scale 4), the batch band's TTL is 3 H100 seconds, and round-robin's backlog
(0.5x capacity x 10 s) drains in about 5 H100 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

from bench.loadgen import LoadItem, run_load
from bench.stack import BASE_MODEL, Stack, StackConfig
from shared.tokens import text_for_tokens

PRIORITY_TIME_SCALE = 4.0  # ~22 req/s wall at 1.5x with 8-KB prompts and ~16 SSE chunks each
PRIORITY_DURATION_H100_S = 10.0  # simulated seconds of sending per route
# One simulated pod's saturation on long_prompt_items, req/s (virtual time, `--calibrate`).
POD_CAPACITY_QPS = 14.5
PROMPT_TOKENS = (1000, 3000)
OUTPUT_TOKENS = (8, 24)
TTL_H100_S = 3.0  # the batch band's wait in the picker before 429 rejected-ttl-expired
BANDS = (("top band (priority 100)", BASE_MODEL, 0.3), ("batch band (priority -100)", "batch", 0.7))


def long_prompt_items(seed: int = 0) -> Iterator[LoadItem]:
    """Endless prefill-bound requests: uniform prompt and output lengths, unique prompts."""
    rng = random.Random(seed)
    while True:
        p = rng.randint(*PROMPT_TOKENS)
        yield LoadItem(text_for_tokens(p, seed=rng.getrandbits(64)), rng.randint(*OUTPUT_TOKENS))


async def run_priority_phase(args: Any, rows: list, row_type: Any) -> None:
    from bench.demo import h100_equivalent, say, wait_idle  # the demo's helpers (no import cycle at load)

    scale = args.time_scale or PRIORITY_TIME_SCALE
    duration = args.duration or PRIORITY_DURATION_H100_S * scale
    pods = len(StackConfig().pods)
    qps = args.priority_load * POD_CAPACITY_QPS * pods
    cap = POD_CAPACITY_QPS * pods
    say(f"mixed priorities: {qps:g} req/s H100 ({args.priority_load:g}x the 4 pods' {cap:g}), "
        f"long prompts / short answers, flow control on, time scale {scale:g}x")  # fmt: skip
    config = StackConfig(
        pickers=args.pickers,
        profile=args.profile,
        time_scale=scale,
        picker_args=("--flow-control", "on", "--flow-control-ttl", f"{TTL_H100_S * scale:g}"),
    )
    t0 = time.monotonic()
    async with Stack(config) as stack:
        say(f"stack ready in {time.monotonic() - t0:.1f} s (logs: {stack.log_dir})")
        for route, url in (("InferGate picker (flow control)", stack.gateway_url),
                           ("Envoy round-robin", stack.round_robin_url)):  # fmt: skip
            say(f"  {route}: both bands for {duration:g} s wall")
            t1 = time.monotonic()
            runs = []
            for i, (_, model, share) in enumerate(BANDS):
                sent_model = model if url == stack.gateway_url else BASE_MODEL
                runs.append(
                    run_load(
                        url, long_prompt_items(args.seed * 10 + i), qps * share / scale, duration,
                        stream=True,
                        model=sent_model, drain_timeout_s=10.0 * scale, request_timeout_s=20.0 * scale,
                        seed=args.seed + i,
                    )
                )  # fmt: skip
            for (band, _, _), result in zip(BANDS, await asyncio.gather(*runs), strict=True):
                # (not in ``results``: the latency plot is per phase of the ShareGPT/prefix kind)
                s = h100_equivalent(result.summary(), scale)
                rows.append(row_type(f"mixed priority, {band}", route, s))
                p50, p90 = s["ttft_p50_s"] * 1e3, s["ttft_p90_s"] * 1e3
                say(f"    {band}: TTFT p50 {p50:.0f} ms, p90 {p90:.0f} ms (H100), ok {s['ok']}, "
                    f"errors {s['errors'] or 0}")  # fmt: skip
            say(f"  {route}: {time.monotonic() - t1:.0f} s wall with the drain")
            await wait_idle(stack)


def report_note(args: Any) -> list[str]:
    """The mixed-priority phase's lines in the demo report (its workload, load and time scale)."""
    scale = args.time_scale or PRIORITY_TIME_SCALE
    duration = args.duration or PRIORITY_DURATION_H100_S * scale
    cap = POD_CAPACITY_QPS * 4
    return [
        f"Mixed-priority phase: {args.priority_load:g}x the 4 pods' capacity ({cap:g} req/s, measured by",
        "`python -m bench.demo_flow --calibrate`) of long prompts with short answers (1,000-3,000",
        "prompt tokens, 8-24 output tokens: prefill-bound, so the pods' queues build within seconds),",
        "30% top band (priority 100), 70% batch (priority -100); pickers with `--flow-control on`",
        f"(TTL {TTL_H100_S:g} s H100); time scale {scale:g}, {duration:g} s wall of sending per route.",
    ]


def calibrate(
    rates: list[float], duration_s: float = 20.0, seed: int = 3
) -> list[tuple[float, float, float]]:
    """(offered, served req/s, p50 TTFT s) of one simulated pod on :func:`long_prompt_items`' lengths.

    Virtual time on the simulator's engine with its default configuration (what
    ``infergate-sim serve`` runs): where served levels off is the pod's capacity.
    """
    from sim.calibrate import run_poisson
    from sim.config import EngineConfig
    from sim.workloads import WorkItem, percentile, unique_hashes

    class _Lengths:
        def __init__(self, rng: random.Random) -> None:
            self.rng = rng

        def sample(self) -> WorkItem:
            p = self.rng.randint(*PROMPT_TOKENS)
            return WorkItem(p, self.rng.randint(*OUTPUT_TOKENS), unique_hashes(p, self.rng))

    out = []
    for rate in rates:
        r = run_poisson(EngineConfig(), _Lengths(random.Random(seed)), rate, duration=duration_s, seed=1)
        out.append((rate, len(r.requests) / r.end, percentile(r.ttfts(), 50)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo_flow", description=__doc__.split("\n")[0])
    p.add_argument("--calibrate", action="store_true", help="measure one pod's saturation on this workload")
    args = p.parse_args(argv)
    if not args.calibrate:
        p.print_help()
        return 0
    for rate, served, ttft in calibrate([10, 13, 15, 20, 30]):
        print(f"offered {rate:5.1f} req/s: served {served:5.1f} req/s, TTFT p50 {ttft * 1e3:,.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
