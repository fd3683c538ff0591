"""SLO headers steer requests through the real stack (Envoy, NATS, collector, picker) over a mixed pool.

Two simulated pods: an H100 ($3/h) and an L40S ($1/h, ~4x slower per decode step), labelled
through the collector's targets file. The picker runs the ``predicted-latency`` profile:
after a warm-up of streamed requests (the completions teach its latency model), a tight
TPOT objective must land on the H100, a loose one on the cheaper L40S that still meets it,
and a Sheddable request nobody can serve in time is rejected with the reason header.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bench.stack import BASE_MODEL, PodPlan, Stack, StackConfig
from picker.protocol import DROPPED_REASON
from tests.e2e.stack_helpers import SELECT, completion, eventually, picker_gauges, pod_by_address, post

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


# The built-in profile with a shorter warm-up (each accelerator's model answers after 10
# completions instead of 30), to keep the test short.
SCHEDULER = """
version: 2
plugins:
  - {name: slo, type: slo-latency, parameters: {default_ttft_ms: 500, default_tpot_ms: 50, min_samples: 10}}
schedulingProfiles:
  - {name: predicted-latency, plugins: [{pluginRef: slo}]}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory) -> AsyncIterator[Stack]:
    sched = tmp_path_factory.mktemp("slo") / "scheduler.yaml"
    sched.write_text(SCHEDULER)
    config = StackConfig(
        pods=(
            PodPlan("h100", "node-a", accelerator="h100-80gb", cost_per_hour=3.0),
            PodPlan("l40s", "node-a", accelerator="l40s-48gb", cost_per_hour=1.0),
        ),
        pickers=1,
        profile="predicted-latency",
        autoscaler=False,
        round_robin_envoy=False,
        time_scale=1.0,
        # --conformance-test-hooks: the served endpoint comes back in a header, and warm-up pins pods
        picker_args=("--conformance-test-hooks", "--scheduler-config", str(sched)),
    )
    async with Stack(config) as s:
        yield s


def _stream(max_tokens: int = 16) -> dict:
    return completion(max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})


async def test_slo_headers_steer_to_the_faster_or_the_cheaper_pod(stack: Stack) -> None:
    url = stack.gateway_url
    # Warm-up: streamed requests pinned to each pod, so the model sees both accelerators (each
    # accelerator's own model answers after min_samples = 10 of its completions).
    replies = await asyncio.gather(
        *(post(url, _stream(), headers={SELECT: p.address}) for p in stack.pods for _ in range(10))
    )
    assert all(r.status == 200 for r in replies), [str(r) for r in replies if r.status != 200][:2]

    async def ready() -> bool:
        return (await picker_gauges(stack, "infergate_latency_model_ready")) == [1.0]

    await eventually(ready, 30, "the latency model trained")

    async def served_by(headers: dict[str, str]) -> list[str]:
        # 5 at once: in flight they stay under the pool's queue threshold (5) and inside the
        # batch sizes the warm-up showed the model, so each is still a plain prediction
        replies = await asyncio.gather(*(post(url, _stream(), headers=headers) for _ in range(5)))
        return [pod_by_address(stack, r.served) for r in replies]

    tight = {"x-slo-ttft-ms": "2000", "x-slo-tpot-ms": "20"}  # only the H100 decodes that fast
    served = await served_by(tight)
    assert served == ["h100"] * 5, served

    loose = {"x-llm-d-slo-ttft-ms": "5000", "x-llm-d-slo-tpot-ms": "500"}  # llm-d's names; both meet it
    served = await served_by(loose)
    assert served == ["l40s"] * 5, served  # the cheaper one

    # counted from here: under CPU load a tight request above may itself be predicted late
    (before,) = await picker_gauges(stack, "infergate_slo_predicted_violations_total")
    hopeless = {"x-slo-ttft-ms": "1", "x-slo-tpot-ms": "0.1"}
    shed = await post(url, completion(model="batch"), headers=hopeless)
    assert shed.status == 429 and shed.headers.get(DROPPED_REASON) == "rejected-saturated", str(shed)
    assert "predicted to meet" in shed.json()["error"]["message"]
    served_anyway = await post(url, completion(model=BASE_MODEL), headers=hopeless)  # Critical: served
    assert served_anyway.status == 200 and pod_by_address(stack, served_anyway.served) == "h100"

    bad = await post(url, completion(), headers={"x-slo-ttft-ms": "soon"})
    assert bad.status == 400 and "x-slo-ttft-ms" in bad.json()["error"]["message"]
    (after,) = await picker_gauges(stack, "infergate_slo_predicted_violations_total")
    assert after - before == 2.0  # one served, one rejected; the bad header is no prediction
