"""The demo's mixed-priority phase: flow control through Envoy against round-robin, over capacity.

A fresh stack whose pickers run with flow control on (``--flow-control on``: utilization
detector, round-robin fairness, FCFS). Two bands of the same ShareGPT-like load arrive
together at ``--priority-load`` times the 4 pods' capacity: 30% on the base model (its
InferenceModel is Critical: priority 100) and 70% as ``batch`` (Sheddable: priority -100,
rewritten to the base model). Through the picker the top band is served first and the
batch band waits in the picker (or gets 429 past the TTL); through round-robin both
share the pods' FCFS queues (round-robin sends ``batch`` as the base model, since it has
no rewrite). The table gives each band's figures for both routes, in H100 time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.loadgen import run_load, sharegpt_like_items
from bench.stack import BASE_MODEL, Stack, StackConfig

PRIORITY_TIME_SCALE = 16.0  # streaming over capacity: keep the wall rate within the machine
POD_CAPACITY_QPS = 26.0  # the fit saturates one calibrated pod near 26 req/s (bench/results/seed.md)
BANDS = (("top band (priority 100)", BASE_MODEL, 0.3), ("batch band (priority -100)", "batch", 0.7))


async def run_priority_phase(args: Any, rows: list, row_type: Any) -> None:
    from bench.demo import h100_equivalent, say, wait_idle  # the demo's helpers (no import cycle at load)

    scale = args.time_scale or PRIORITY_TIME_SCALE
    duration = args.duration or 40.0
    pods = len(StackConfig().pods)
    qps = args.priority_load * POD_CAPACITY_QPS * pods
    say(f"mixed priorities: {qps:g} req/s H100 ({args.priority_load:g}x capacity), flow control on, "
        f"time scale {scale:g}x")  # fmt: skip
    config = StackConfig(
        pickers=args.pickers,
        profile=args.profile,
        time_scale=scale,
        picker_args=("--flow-control", "on", "--flow-control-ttl", str(min(25.0, 3.0 * scale))),
    )
    t0 = time.monotonic()
    async with Stack(config) as stack:
        say(f"stack ready in {time.monotonic() - t0:.1f} s (logs: {stack.log_dir})")
        for route, url in (("InferGate picker (flow control)", stack.gateway_url),
                           ("Envoy round-robin", stack.round_robin_url)):  # fmt: skip
            say(f"  {route}: both bands for {duration:g} s")
            runs = []
            for i, (_, model, share) in enumerate(BANDS):
                sent_model = model if url == stack.gateway_url else BASE_MODEL
                runs.append(
                    run_load(
                        url, sharegpt_like_items(args.seed + i), qps * share / scale, duration, stream=True,
                        model=sent_model, drain_timeout_s=30.0 * scale, request_timeout_s=60.0 * scale,
                        seed=args.seed + i,
                    )
                )  # fmt: skip
            for (band, _, _), result in zip(BANDS, await asyncio.gather(*runs), strict=True):
                # (not in ``results``: the latency plot is per phase of the ShareGPT/prefix kind)
                rows.append(
                    row_type(f"mixed priority, {band}", route, h100_equivalent(result.summary(), scale))
                )
            await wait_idle(stack)
