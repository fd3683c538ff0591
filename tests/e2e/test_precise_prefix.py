"""Precise prefix routing on the real stack: simulated vLLM pods publishing KV events over ZMQ,
collectors republishing them on NATS, two pickers behind Envoy.

Bounds are about behaviour (who served, that nothing failed, that views converge), never
about how fast our code is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from bench import faults
from bench.stack import BASE_MODEL, PodPlan, Stack, StackConfig
from shared.tokens import text_for_tokens
from tests.e2e.stack_helpers import completion, eventually, picker_gauges, pod_by_address, post

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

BLOCKS = "infergate_picker_kv_index_blocks"
CHAT = "/v1/chat/completions"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[Stack]:
    # Three pods on two nodes (a collector each), engines at H100 speed: what the tests need,
    # no more (the demo's four pods at a tenth of the speed took twice as long).
    pods = (PodPlan("vllm-0", "node-a"), PodPlan("vllm-1", "node-a"), PodPlan("vllm-2", "node-b"))
    cfg = StackConfig(
        pods=pods,
        pickers=2,
        profile="precise-prefix",
        kv_events=True,
        autoscaler=False,
        round_robin_envoy=False,
        time_scale=1.0,
    )
    async with Stack(cfg) as s:
        yield s


async def paths(stack: Stack, index: int) -> dict[str, float]:
    """The precise-prefix scorer's decisions by path on one picker."""
    p = stack.pickers[index]
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as resp,
    ):
        page = await resp.text()
    return {path: _labelled(page, path) for path in ("precise", "mixed", "approximate")}


def _labelled(page: str, path: str) -> float:
    key = f'infergate_picker_prefix_path_total{{path="{path}"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(key))


def _chat(system: str, question: str) -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {"model": BASE_MODEL, "messages": messages, "max_tokens": 4}


async def test_a_chat_lands_on_the_pod_that_holds_its_system_prompt(stack: Stack) -> None:
    """Six chats, each with its own long system prompt, go first straight to a pod (pods
    0, 1, 2, 0, 1, 2), past Envoy and the pickers: only the pods' KV events can tell the
    pickers who holds which prompt. A second chat on each system prompt, through Envoy,
    must land on that pod every time: a pick blind to the pods' blocks matches all six
    with probability 3^-6 at random, and never with one fixed preference. It runs first,
    on a fresh stack, so the index grows by these blocks alone."""
    pods = [stack.pods[i % len(stack.pods)] for i in range(6)]
    systems = [text_for_tokens(600, seed=300 + i) for i in range(6)]
    before = await picker_gauges(stack, BLOCKS)
    offloaded = await picker_gauges(stack, "infergate_picker_precise_offloaded_total")
    firsts = await asyncio.gather(
        *(
            post(f"http://{pod.address}", _chat(system, "First question?"), path=CHAT)
            for pod, system in zip(pods, systems, strict=True)
        )
    )
    assert all(r.status == 200 for r in firsts), [str(r) for r in firsts]
    need = len(systems) * (600 // 16)  # the system prompts' full blocks, at least

    async def indexed() -> bool:
        now = await picker_gauges(stack, BLOCKS)
        return all(n - b >= need for n, b in zip(now, before, strict=True))

    await eventually(indexed, 20.0, "every picker indexed the six system prompts")
    precise = sum([(await paths(stack, i))["precise"] for i in range(len(stack.pickers))])
    served = []
    for i, system in enumerate(systems):
        r = await post(stack.gateway_url, _chat(system, f"Second question, number {i}?"), path=CHAT)
        assert r.status == 200, r
        served.append(pod_by_address(stack, r.served))
    assert served == [p.plan.name for p in pods]
    after = sum([(await paths(stack, i))["precise"] for i in range(len(stack.pickers))])
    assert after - precise >= len(systems), (precise, after)  # scored on the precise path
    # the rendered chats (2,400+ characters) were tokenized off the event loop
    now = await picker_gauges(stack, "infergate_picker_precise_offloaded_total")
    assert sum(now) - sum(offloaded) >= len(systems), (offloaded, now)


async def test_a_shared_prefix_follows_the_pod_that_holds_it(stack: Stack) -> None:
    context = text_for_tokens(1500, seed=77)
    first = await post(stack.gateway_url, completion(prompt=context + " q0"))
    assert first.status == 200, first
    holder = pod_by_address(stack, first.served)

    async def indexed() -> bool:
        return all(v > 0 for v in await picker_gauges(stack, BLOCKS))

    await eventually(indexed, 20.0, "every picker indexed the pods' blocks")
    served = []
    for i in range(1, 7):
        r = await post(stack.gateway_url, completion(prompt=context + f" q{i}"))
        assert r.status == 200, r
        served.append(pod_by_address(stack, r.served))
    assert served.count(holder) >= 5, (holder, served)
    precise = [(await paths(stack, i))["precise"] for i in range(len(stack.pickers))]
    assert sum(precise) >= 7, precise  # every decision above was scored on the precise path
    # these 6,000-character prompts were tokenized off the event loop, before scheduling
    assert sum(await picker_gauges(stack, "infergate_picker_precise_offloaded_total")) >= 7


async def test_killed_collector_degrades_to_approximate_without_failures(stack: Stack) -> None:
    collector = stack.collectors["node-b"]  # vllm-2
    await collector.kill()
    try:
        before = [await paths(stack, i) for i in range(2)]
        # through the moment vllm-2's digests go stale (3 s) and after it
        run = await faults.with_load("kv-collector-killed", {"gw": stack.gateway_url}, _no_fault, 4.5)
        assert run["gw"].success_ratio() == 1.0, run["gw"].failures
        after = [await paths(stack, i) for i in range(2)]
        # node-a's pods stay precise; node-b's, without digests (and with stale metrics, so
        # ranked as their own group), are scored on the approximate path
        assert sum(a["approximate"] for a in after) > sum(b["approximate"] for b in before), (before, after)
        assert sum(a["precise"] for a in after) > sum(b["precise"] for b in before), (before, after)
    finally:
        await collector.start(60)


async def test_nats_outage_routes_every_request_and_precise_comes_back(stack: Stack) -> None:
    approximate = [(await paths(stack, i))["approximate"] for i in range(2)]
    # longer than the 3 s after which a pod without digests leaves the precise path
    run = await faults.nats_outage(stack, outage_s=4.0, lead_s=0.5, tail_s=2.0)
    assert run.success_ratio() == 1.0, run.failures
    after = [(await paths(stack, i))["approximate"] for i in range(2)]
    assert sum(after) > sum(approximate), (approximate, after)  # degraded, and nothing failed
    before = [(await paths(stack, i))["precise"] for i in range(2)]

    async def precise_again() -> bool:
        r = await post(stack.gateway_url, completion(prompt=text_for_tokens(300, seed=5)))
        now = [(await paths(stack, i))["precise"] for i in range(2)]
        return r.status == 200 and any(n > b for n, b in zip(now, before, strict=True))

    await eventually(precise_again, 30.0, "precise path back after the outage")


async def test_restarted_picker_converges(stack: Stack) -> None:
    picker = stack.pickers[-1]
    await picker.process.kill()
    await picker.process.start(60)

    async def converged() -> bool:
        a, b = await picker_gauges(stack, BLOCKS)
        return a > 0 and a == b

    await eventually(converged, 30.0, "the restarted picker's index equals its peer's")


async def _no_fault(now) -> None:
    return None
