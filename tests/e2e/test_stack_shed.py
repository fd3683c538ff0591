"""Saturation through the real stack: Sheddable requests get 429 while Critical ones are still admitted.

A small stack of 2 base-model pods with a tiny KV cache (2,048 tokens) receives a burst of
long Critical streams, so both pods queue. The assertions are about behaviour: while the
pool is saturated a Sheddable model (``batch``) is answered 429 with an OpenAI error and a
Critical one is not shed (it is served once the burst goes away); after the burst, batch
is served again.
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
from tests.e2e.stack_helpers import SELECT, Reply, completion, eventually, metric_value, pod_metrics, post

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[Stack]:
    config = StackConfig(
        pods=(PodPlan("vllm-0", "node-a"), PodPlan("vllm-1", "node-b")),
        pickers=2,
        autoscaler=False,
        round_robin_envoy=False,
        sim_args=("--kv-capacity-tokens", "2048"),
        # The tests pin requests to pods with test-epp-endpoint-selection: conformance hooks on.
        picker_args=("--conformance-test-hooks",),
    )
    async with Stack(config) as s:
        yield s


async def _hold(session: aiohttp.ClientSession, url: str, pod: str, seed: int) -> int:
    """One long Critical stream on ``pod`` (pinned, so both pods fill up), read until cancelled.

    Distinct prompts: identical ones would share their KV blocks through prefix caching.
    """
    prompt = text_for_tokens(600, seed=seed)
    body = {"model": BASE_MODEL, "prompt": prompt, "max_tokens": 1000, "stream": True}
    async with session.post(url + "/v1/completions", json=body, headers={SELECT: pod}) as resp:
        async for _ in resp.content:
            pass
        return resp.status


async def _waiting(stack: Stack) -> list[float]:
    pages = await asyncio.gather(*(pod_metrics(stack, p.plan.name) for p in stack.pods))
    return [metric_value(page, "vllm:num_requests_waiting") for page in pages]


async def test_sheddable_is_shed_and_critical_is_admitted_under_saturation(stack: Stack) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        burst = [
            asyncio.create_task(_hold(session, stack.gateway_url, pod.address, seed=100 * n + i))
            for n, pod in enumerate(stack.pods)
            for i in range(12)
        ]
        try:

            async def saturated() -> bool:
                return all(w > 5 for w in await _waiting(stack))

            await eventually(saturated, 30, "both pods queueing")

            shed: list[Reply] = []

            async def batch_is_shed() -> bool:
                # A probe the picker admits (its view a few ms behind the pods) would queue
                # behind the burst: give up on it quickly, the pod aborts it on disconnect.
                try:
                    r = await post(stack.gateway_url, completion("batch"), timeout_s=3.0)
                except TimeoutError:
                    return False
                shed.append(r)
                return r.status == 429

            await eventually(batch_is_shed, 20, "batch shed")
            err = shed[-1].json()["error"]
            assert err["code"] == 429 and err["message"], shed[-1]
            assert shed[-1].headers["content-type"].startswith("application/json"), shed[-1]

            critical = asyncio.create_task(post(stack.gateway_url, completion(BASE_MODEL, max_tokens=2)))
            await asyncio.sleep(1.0)  # long enough to be shed if it were going to be
            assert not critical.done() or critical.result().status != 429, critical.result()
        finally:
            for task in burst:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*burst, return_exceptions=True)
        served = await asyncio.wait_for(critical, 60)
        assert served.status == 200, served

    async def drained() -> bool:
        return all(w == 0 for w in await _waiting(stack))

    await eventually(drained, 30, "queues drained")

    async def batch_served() -> bool:
        return (await post(stack.gateway_url, completion("batch"))).status == 200

    await eventually(batch_served, 15, "batch served again")
