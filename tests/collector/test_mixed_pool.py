"""A mixed pool, vLLM and SGLang pods, through the real stack: collector -> NATS -> picker.

Simulated pods of both kinds (sim/, ``flavor="sglang"`` renders SGLang's metrics page),
a real collector scraping them, a real nats-server, and the picker with the default
profile's scorers answering ext_proc streams. The picker must see each pod's load whatever its
page dialect, and send requests to the idle pod, be it a vLLM or an SGLang one.
"""

from __future__ import annotations

import json

import grpc

from collector.service import Collector, CollectorConfig
from collector.targets import Target
from picker.envoy_client import EnvoyStream, headers_of
from picker.service import Picker
from shared.natsconn import NatsOptions
from sim.engine import EngineConfig, SimRequest
from sim.server import PodSpec, SimCluster
from tests.support.pickers import loopback_config
from tests.support.waiting import wait_until

MODEL = "meta-llama/Llama-2-7b-hf"
# Two running slots per pod, so submitted work queues up and stays for the test's length.
ENGINE = EngineConfig(max_num_seqs=2, max_num_batched_tokens=4096)
SPECS = [
    PodSpec(name="vllm-a", engine=ENGINE),
    PodSpec(name="vllm-b", engine=ENGINE),
    PodSpec(name="sgl-a", engine=ENGINE, flavor="sglang"),
    PodSpec(name="sgl-b", engine=ENGINE, flavor="sglang"),
]


# The default profile's scorers, with a staleness bound far above any scrape delay: the
# test is about reading both dialects, and on a loaded machine a scrape can come more than
# the default 200 ms late, when a stale idle pod would rank after every fresh busy one.
SCHEDULER = """
version: 2
plugins:
  - {name: work, type: expected-work}
  - {name: lora, type: lora-affinity}
  - {name: prefix, type: prefix-affinity}
schedulingProfiles:
  - name: dialects
    plugins: [{pluginRef: work, weight: 4}, {pluginRef: lora, weight: 6}, {pluginRef: prefix, weight: 8}]
    saturation: {include_inflight: true, staleness_ms: 10000}
"""


def load(pod, n: int = 40) -> list[str]:
    """Queue ``n`` long requests on ``pod``; returns their ids."""
    ids = [f"{pod.name}-load-{i}-{pod.engine.num_requests}" for i in range(n)]
    for rid in ids:
        pod.submit(SimRequest(rid, 400, 3000))
    return ids


async def route(channel: grpc.aio.Channel) -> str:
    """One request through the picker; returns the chosen endpoint (the first of the list)."""
    s = EnvoyStream(channel).open()
    s.request_headers()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    s.request_body(json.dumps(body).encode(), True)
    r = await s.recv()
    dest = headers_of(r.request_headers.response.header_mutation)["x-gateway-destination-endpoint"]
    s.cancel()  # the request never reaches a pod: the picker releases its in-flight entry
    return dest.split(",")[0]


async def test_mixed_vllm_and_sglang_pool_is_scheduled_by_load(nats_server, tmp_path):
    sched = tmp_path / "scheduler.yaml"
    sched.write_text(SCHEDULER)
    async with SimCluster(SPECS) as cluster:
        pods = {p.name: p for p in cluster.pods}
        targets = [Target("default", "pool", p.name, "127.0.0.1", p.port) for p in cluster.pods]
        addr = {t.pod: t.address for t in targets}
        collector = Collector(
            CollectorConfig(
                node_name="n1", nats=NatsOptions(servers=[nats_server.url]), targets=targets, ops_port=None
            )
        )
        picker = Picker(
            loopback_config(
                nats=NatsOptions(servers=[nats_server.url], name="picker"),
                scheduler_config=str(sched),
                profile="dialects",
            )
        )
        await collector.start()
        try:
            await collector.wait_ready()
            await picker.start()
            await picker.wait_ready(10)

            def snap(pod: str):
                ep = picker.view.endpoints.get(addr[pod])
                return ep.snapshot if ep is not None else None

            await wait_until(lambda: all(snap(p) is not None for p in addr), 10, "every pod in the view")
            assert {p: snap(p).engine for p in addr} == {
                "vllm-a": "vllm",
                "vllm-b": "vllm",
                "sgl-a": "sglang",
                "sgl-b": "sglang",
            }

            # 1. Every pod but one SGLang pod is busy: the SGLang pod gets the traffic.
            busy = {name: load(pods[name]) for name in ("vllm-a", "vllm-b", "sgl-b")}
            await wait_until(lambda: all(snap(p).waiting > 10 for p in busy), 10, "loads in the view")
            assert snap("sgl-a").waiting == 0
            async with grpc.aio.insecure_channel(picker.address) as ch:
                chosen = [await route(ch) for _ in range(10)]
            assert chosen == [addr["sgl-a"]] * 10, chosen

            # 2. The idle one is now a vLLM pod: it gets the traffic, the SGLang pods none.
            load(pods["sgl-a"])
            for rid in busy.pop("vllm-b"):
                pods["vllm-b"].engine.abort(rid)
            await wait_until(
                lambda: snap("sgl-a").waiting > 10 and snap("vllm-b").waiting == 0, 10, "new loads"
            )
            async with grpc.aio.insecure_channel(picker.address) as ch:
                chosen = [await route(ch) for _ in range(10)]
            assert chosen == [addr["vllm-b"]] * 10, chosen
        finally:
            await picker.stop(grace=0.1)
            await collector.stop()
