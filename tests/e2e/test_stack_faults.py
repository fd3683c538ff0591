"""Faults on the real stack, under a steady low load (bench.faults): NATS outage, collector, pod and
picker kills, and all pickers down under FailClose vs FailOpen.

One stack for the module; every test puts back what it broke. Bounds are generous and
about behaviour (who answered, with what, and that it comes back), never about how fast
our code is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bench import faults
from bench.stack import Stack, StackConfig
from tests.e2e.stack_helpers import SELECT, completion, eventually, picker_gauges, pod_by_address, post

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

READY = "inference_pool_ready_pods"
STALE = "infergate_picker_view_stale_endpoints"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[Stack]:
    # The tests pin requests to pods with test-epp-endpoint-selection: conformance hooks on.
    hooks = ("--conformance-test-hooks",)
    async with Stack(
        StackConfig(pickers=2, autoscaler=False, round_robin_envoy=False, picker_args=hooks)
    ) as s:
        yield s


async def all_pickers_see(stack: Stack, name: str, value: float, deadline_s: float = 20.0) -> None:
    async def cond() -> bool:
        return all(v == value for v in await picker_gauges(stack, name))

    await eventually(cond, deadline_s, f"{name} == {value} on every picker")


async def test_nats_outage_routes_from_the_last_view_then_resyncs(stack: Stack) -> None:
    run = await faults.nats_outage(stack, outage_s=10.0, lead_s=1.0, tail_s=6.0)
    assert run.success_ratio(run.injected_at, run.ref_at) >= 0.9, run.failures
    recovery = run.recovery_s()
    assert recovery is not None, run.failures
    assert run.success_ratio(run.ref_at + recovery) == 1.0, run.failures
    # Resynced, not just still routing from the old picture: a pod killed now is noticed.
    pod = stack.pod("vllm-3")
    await pod.process.kill()
    try:
        await all_pickers_see(stack, READY, 3)
    finally:
        await pod.process.start(60)
    await all_pickers_see(stack, READY, 4)


async def test_killed_collector_leaves_stale_but_routable_snapshots(stack: Stack) -> None:
    collector = stack.collectors["node-b"]
    await collector.kill()
    try:
        await all_pickers_see(stack, STALE, 2)  # vllm-2 and vllm-3 are on node-b
        assert await picker_gauges(stack, READY) == [4.0, 4.0]
        for name in ("vllm-2", "vllm-3"):
            r = await post(stack.gateway_url, completion(), headers={SELECT: stack.pod(name).address})
            assert r.status == 200 and pod_by_address(stack, r.served) == name, r
        run = await faults.with_load("collector-killed", {"gw": stack.gateway_url}, _no_fault, 4.0)
        assert run["gw"].success_ratio() == 1.0, run["gw"].failures
    finally:
        await collector.start(60)
    await all_pickers_see(stack, STALE, 0)


async def _no_fault(now) -> None:
    return None


async def test_killed_pod_costs_few_requests(stack: Stack) -> None:
    pod = stack.pod("vllm-0")
    run = await faults.kill_and_restore(
        stack, "pod-killed", pod.process.kill, lambda: pod.process.start(60), lead_s=2.0, after_s=6.0
    )
    assert sum(run.failures.values()) <= max(3, 0.1 * len(run.records)), run.failures
    recovery = run.recovery_s()
    assert recovery is not None, run.failures
    assert run.success_ratio(run.ref_at + recovery) == 1.0, run.failures
    await all_pickers_see(stack, READY, 4)


async def test_killed_picker_replica_is_removed_by_envoy(stack: Stack) -> None:
    """Only the dead replica's in-flight requests fail (503 JSON, FailClose).

    Envoy ejects the replica on its first refused connection (outlier detection on the
    picker cluster), before the gRPC health check (2 s, 2 misses) would. Without that,
    LEAST_REQUEST keeps preferring the dead replica, which has no active requests, and the
    fault report measured 25-46 failures per kill instead of the 2-4 streams in flight.
    """
    picker = stack.pickers[-1]
    run = await faults.kill_and_restore(
        stack, "picker-killed", picker.process.kill, lambda: picker.process.start(60), lead_s=2.0, after_s=9.0
    )
    assert set(run.failures) <= {"503"}, run.failures
    assert sum(run.failures.values()) <= 8, run.failures  # the streams in flight on it, not a window
    assert run.success_ratio(0.0, run.injected_at - 1.0) == 1.0, run.failures
    recovery = run.recovery_s()
    assert recovery is not None, run.failures
    assert run.success_ratio(run.ref_at + recovery) == 1.0, run.failures


async def test_all_pickers_down_fail_close_vs_fail_open(stack: Stack) -> None:
    fail_open = await stack.add_gateway("FailOpen")
    for url in (stack.gateway_url, fail_open):
        r = await post(url, completion())
        assert r.status == 200 and pod_by_address(stack, r.served), r
    for p in stack.pickers:
        await p.process.kill()
    try:
        for _ in range(4):
            closed = await post(stack.gateway_url, completion())
            assert closed.status == 503, closed
            assert "endpoint picker is unavailable" in closed.json()["error"]["message"], closed
            opened = await post(fail_open, completion())
            assert opened.status == 200, opened  # served by the round-robin pool route
    finally:
        for p in stack.pickers:
            await p.process.start(60)

    async def picker_routes_again() -> bool:
        return (await post(stack.gateway_url, completion())).status == 200

    await eventually(picker_routes_again, 20, "FailClose gateway serving again")
