"""Flow control through the real stack: Envoy -> picker (flow control on) -> simulated vLLM pods, NATS.

One stack for the whole module: one pod, two picker replicas sharing one view over real
NATS, the concurrency detector at one request per pod (pool-wide): a long stream
(``_hold``) occupies the pod, so every other request waits in a picker's queue, on either
replica. The assertions are about order and outcome, never about timing:

* the top band (the base model: Critical, priority 100) is served before a backlog of a lower
  band (``batch``: Sheddable) queued earlier, whichever replicas they wait on (pool-wide
  band order);
* a request queued past its TTL gets 429 with ``x-llm-d-request-dropped-reason:
  rejected-ttl-expired``;
* a client that disconnects while queued leaves no entry (the queue gauge goes back to 0);
* the two replicas together keep the pod within the one pool-wide limit;
* scale from zero (last: it stops the pod): with no pod ready a request waits and succeeds
  once the pod is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from bench.stack import BASE_MODEL, PodPlan, Stack, StackConfig
from shared.tokens import text_for_tokens
from tests.e2e.stack_helpers import completion, eventually, metric_value, picker_gauges, pod_metrics, post

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

QUEUE = "llm_d_epp_flow_control_queue_size"
FLOW_ARGS = (
    "--flow-control", "on",
    "--flow-control-detector", "concurrency",
    "--flow-control-max-requests-per-pod", "1",
    "--flow-control-ttl", "6",
    "--flow-control-scale-from-zero-ttl", "25",
)  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[Stack]:
    config = StackConfig(
        pods=(PodPlan("vllm-0", "node-a"),),
        pickers=2,
        time_scale=2.0,  # short requests; the holding stream (4,000 tokens) still lasts ~50 s
        autoscaler=False,
        round_robin_envoy=False,
        picker_args=FLOW_ARGS,
    )
    async with Stack(config) as s:
        yield s


async def _hold(url: str, seed: int, started: asyncio.Event | None = None) -> int:
    """One long stream, read until cancelled: it occupies the pod's only flow-control slot."""
    body = {"model": BASE_MODEL, "prompt": text_for_tokens(50, seed=seed), "max_tokens": 4000, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/completions", json=body) as resp,
    ):
        assert resp.status == 200, resp.status
        async for _ in resp.content:
            if started is not None:
                started.set()
        return resp.status


@contextlib.asynccontextmanager
async def holding(stack: Stack, seed: int = 1) -> AsyncIterator[None]:
    started = asyncio.Event()
    task = asyncio.create_task(_hold(stack.gateway_url, seed, started))
    try:
        await asyncio.wait_for(started.wait(), 30)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _queued(stack: Stack) -> float:
    return sum(await picker_gauges(stack, QUEUE))


async def test_top_band_is_served_ahead_of_a_lower_backlog(stack: Stack) -> None:
    done: list[str] = []

    async def one(name: str, model: str) -> int:
        r = await post(stack.gateway_url, completion(model, max_tokens=2), timeout_s=60)
        done.append(name)
        return r.status

    async with holding(stack):
        low = [asyncio.create_task(one(f"low{i}", "batch")) for i in range(3)]
        await eventually(lambda: _gte(stack, 3), 20, "3 batch requests queued")
        top = asyncio.create_task(one("top", BASE_MODEL))
        await eventually(lambda: _band(stack, "100"), 20, "the top request queued")
    statuses = await asyncio.gather(*low, top)
    assert statuses == [200, 200, 200, 200], statuses
    assert done[0] == "top", done


async def _band(stack: Stack, priority: str) -> bool:
    """Something waits in the band of ``priority`` (on any replica)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for p in stack.pickers:
            async with session.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    mine = line.startswith(QUEUE + "{") and f'priority="{priority}"' in line
                    if mine and float(line.rsplit(" ", 1)[1]) >= 1:
                        return True
    return False


async def _gte(stack: Stack, n: int) -> bool:
    return await _queued(stack) >= n


async def test_ttl_expiry_is_429_with_reason(stack: Stack) -> None:
    async with holding(stack, seed=2):
        r = await post(stack.gateway_url, completion(max_tokens=2), timeout_s=60)
    assert r.status == 429, r
    assert r.headers.get("x-llm-d-request-dropped-reason") == "rejected-ttl-expired", r.headers
    assert r.json()["error"]["message"]


async def test_disconnect_while_queued_leaves_no_entry(stack: Stack) -> None:
    async with holding(stack, seed=3):
        with contextlib.suppress(asyncio.TimeoutError, aiohttp.ClientError):
            task = asyncio.create_task(post(stack.gateway_url, completion(max_tokens=2), timeout_s=60))
            await eventually(lambda: _gte(stack, 1), 20, "the request queued")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await eventually(lambda: _empty(stack), 5, "queue empty after the client left (within the TTL)")


async def _empty(stack: Stack) -> bool:
    return await _queued(stack) == 0


async def test_two_replicas_respect_one_pool_wide_limit(stack: Stack) -> None:
    """Limit 1 per pod: whatever replica each request lands on, the pod never runs two at once."""
    pair = stack
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            for p in pair.pods:
                page = await pod_metrics(pair, p.plan.name)
                busy = metric_value(page, "vllm:num_requests_running") + metric_value(
                    page, "vllm:num_requests_waiting"
                )
                peak = max(peak, int(busy))
            await asyncio.sleep(0.05)

    async def one(i: int) -> int:
        body = {"model": BASE_MODEL, "prompt": text_for_tokens(40, seed=100 + i), "max_tokens": 8}
        return (await post(pair.gateway_url, body, timeout_s=60)).status

    handled = "llm_d_epp_flow_control_request_queue_duration_seconds_count"
    before = await picker_gauges(pair, handled)
    watcher = asyncio.create_task(watch())
    statuses = await asyncio.gather(*(one(i) for i in range(8)))
    stop.set()
    await watcher
    assert statuses == [200] * 8, statuses
    assert 1 <= peak <= 1, peak
    after = await picker_gauges(pair, handled)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)  # both replicas took part


async def test_scale_from_zero_waits_for_a_ready_pod(stack: Stack) -> None:
    pod = stack.pod("vllm-0")
    await pod.process.stop()
    await eventually(lambda: _no_ready(stack), 20, "the picker sees no ready pod")
    req = asyncio.create_task(post(stack.gateway_url, completion(max_tokens=2), timeout_s=60))
    await eventually(lambda: _gte(stack, 1), 20, "the request waits in the queue")
    assert not req.done()
    await pod.process.start(60)
    r = await req
    assert r.status == 200, r


async def _no_ready(stack: Stack) -> bool:
    return sum(await picker_gauges(stack, "inference_pool_ready_pods")) == 0
