"""The fault report's hostile-client rows (issue #19): one client's input must hurt no one else.

Both run on a stack of their own with ``--unknown-model-policy route`` (every invented
model name is routed and labelled: the worst case), while the report's steady load of
short Critical requests goes through the gateway:

* ``poison-request``: bursts of 9 concurrent requests, one poison (``max_tokens`` past 64
  bits, 100,000 nested ``[``, an empty body, a random 100 KB model name, in turn) among 8
  normal ones. Before issue #19 the ``max_tokens`` poison crashed the sharing publisher and
  dropped its whole batch: only 5 of 9 assignments reached the peer. The notes give the
  poison's statuses and, at the end, how many of each picker's published assignments the
  other picker applied (all of them, when nothing was lost).
* ``model-name-flood``: 2,000 requests with distinct random model names (and 20 of
  100 KB) as fast as 32 connections send them. The notes give the pickers' ``/metrics``
  page and resident memory before and after, and how many ``model_name`` label values the
  pickers export.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
from collections import Counter
from collections.abc import Callable

import aiohttp

from bench.faults import FaultRun, row, say, with_load
from bench.soak import rss_kib
from bench.stack import BASE_MODEL, Stack, StackConfig, metric_samples

__all__ = ["HOSTILE_FAULTS", "hostile_report"]

HOSTILE_FAULTS = ("poison-request", "model-name-flood")


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_letters, k=n))


def _body(**kw: object) -> bytes:
    return json.dumps({"model": BASE_MODEL, "prompt": "Say hello.", "max_tokens": 8, **kw}).encode()


def poison_body(i: int, rng: random.Random) -> bytes:
    kind = i % 4
    if kind == 0:
        return _body(max_tokens=10**30)
    if kind == 1:
        return b'{"model":"m","prompt":' + b"[" * 100_000 + b"}"
    if kind == 2:
        return b""
    return _body(model=_word(rng, 100_000))


async def _post(session: aiohttp.ClientSession, url: str, data: bytes, counts: Counter[str]) -> None:
    try:
        async with session.post(
            f"{url}/v1/completions", data=data, headers={"content-type": "application/json"}
        ) as r:
            await r.read()
            counts[str(r.status)] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        counts[type(exc).__name__] += 1


async def _pages(stack: Stack) -> list[str]:
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for p in stack.pickers:
            async with session.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as r:
                out.append(await r.text())
    return out


def _total(page: str, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def poison_request(
    stack: Stack, bursts: int = 20, lead_s: float = 3.0, tail_s: float = 4.0
) -> FaultRun:
    rng = random.Random(19)
    poison: Counter[str] = Counter()
    normal: Counter[str] = Counter()

    async def fault(now: Callable[[], float]) -> tuple[float, float]:
        await asyncio.sleep(lead_s)
        injected = now()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for i in range(bursts):
                burst = [_post(session, stack.gateway_url, poison_body(i, rng), poison)]
                burst += [_post(session, stack.gateway_url, _body(), normal) for _ in range(8)]
                await asyncio.gather(*burst)
                await asyncio.sleep(0.25)
        return injected, injected

    duration = lead_s + bursts * 0.3 + tail_s
    run = (await with_load("poison-request", {"gw": stack.gateway_url}, fault, duration))["gw"]
    await asyncio.sleep(1.5)  # the last batches and heartbeats reach the peer
    pages = await _pages(stack)
    published = [_total(p, "infergate_sharing_published_events_total", kind="assignment") for p in pages]
    applied = [_total(p, "infergate_sharing_applied_events_total", kind="assignment") for p in pages]
    dropped = [_total(p, "infergate_sharing_dropped_events_total") for p in pages]
    seen = ", ".join(
        f"{stack.pickers[1 - i].name} applied {applied[1 - i]:.0f} of {published[i]:.0f} published by "
        f"{stack.pickers[i].name}"
        for i in range(2)
    )
    run.notes["poison answered"] = ", ".join(f"{k}: {v}" for k, v in sorted(poison.items()))
    run.notes["the 8 beside each"] = ", ".join(f"{k}: {v}" for k, v in sorted(normal.items()))
    run.notes["peers"] = f"{seen}; events dropped {sum(dropped):.0f}"
    return run


async def model_name_flood(
    stack: Stack, names: int = 2_000, long_names: int = 20, lead_s: float = 3.0, tail_s: float = 3.0
) -> FaultRun:
    rng = random.Random(7)
    flood: Counter[str] = Counter()
    before: dict[str, tuple[int, int]] = {}
    t_flood: list[float] = []

    async def fault(now: Callable[[], float]) -> tuple[float, float]:
        await asyncio.sleep(lead_s)
        pages = await _pages(stack)
        for p, page in zip(stack.pickers, pages, strict=True):
            before[p.name] = (len(page), rss_kib(p.process.proc.pid))  # type: ignore[union-attr]
        injected = now()
        bodies = [_body(model=_word(rng, rng.randint(4, 40))) for _ in range(names)]
        bodies += [_body(model=_word(rng, 100_000)) for _ in range(long_names)]
        rng.shuffle(bodies)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def worker() -> None:
                while not queue.empty():
                    await _post(session, stack.gateway_url, queue.get_nowait(), flood)

            await asyncio.gather(*(worker() for _ in range(32)))
        t_flood.append(time.monotonic() - started)
        return injected, injected

    run = (await with_load("model-name-flood", {"gw": stack.gateway_url}, fault, lead_s + 30.0 + tail_s))[
        "gw"
    ]
    pages = await _pages(stack)
    sizes, values = [], []
    for p, page in zip(stack.pickers, pages, strict=True):
        size0, rss0 = before[p.name]
        rss1 = rss_kib(p.process.proc.pid)  # type: ignore[union-attr]
        sizes.append(
            f"{p.name} /metrics {size0 / 1e3:.0f} -> {len(page) / 1e3:.0f} KB, "
            f"RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB"
        )
        values += metric_samples(page, 'infergate_picker_metric_label_values{label="model_name"}')
    run.notes["flood"] = f"{names + long_names} names in {t_flood[0]:.0f} s: " + ", ".join(
        f"{k}: {v}" for k, v in sorted(flood.items())
    )
    run.notes["pickers"] = "; ".join(sizes) + f"; model_name label values {max(values):.0f}"
    return run


async def hostile_report(time_scale: float, only: set[str]) -> list[str]:
    config = StackConfig(
        time_scale=time_scale, autoscaler=False, round_robin_envoy=False, unknown_model_policy="route"
    )
    rows: list[str] = []
    say("starting a stack with --unknown-model-policy route for the hostile-client rows ...")
    async with Stack(config) as stack:
        if "poison-request" in only:
            say("bursts of 1 poison + 8 normal requests ...")
            run = await poison_request(stack)
            rows.append(row(run, "20 bursts of 9 concurrent requests: 1 poison (4 kinds in turn) + 8 normal"))
        if "model-name-flood" in only:
            say("2,020 distinct model names (20 of 100 KB) through 32 connections ...")
            run = await model_name_flood(stack)
            rows.append(row(run, "2,000 random model names + 20 of 100 KB, 32 connections, policy route"))
    return rows
