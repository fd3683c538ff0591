"""The load generator against the simulator's in-process vLLM-compatible pods."""

from __future__ import annotations

from bench.loadgen import run_load, sharegpt_like_items
from sim.server import SimCluster


async def test_loadgen_against_a_sim_pod_streaming_and_not():
    async with SimCluster(n=1, time_scale=0.05) as cluster:
        url = "http://" + cluster.addresses[0]
        plain = await run_load(url, sharegpt_like_items(seed=3), qps=30, duration_s=0.5, max_requests=20)
        streamed = await run_load(
            url, sharegpt_like_items(seed=3), qps=30, duration_s=0.5, max_requests=20, stream=True
        )
    for res in (plain, streamed):
        s = res.summary()
        assert s["ok"] == s["sent"] > 0
        assert s["output_tok_per_s"] > 0
        assert all(r.output_tokens > 0 for r in res.records)
    # streaming: the first chunk comes before the end for multi-token answers
    assert all(r.ttft_s < r.latency_s for r in streamed.records if r.output_tokens > 4)
