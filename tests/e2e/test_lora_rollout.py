"""LoRA adapters on the real stack: real nats-server, two collectors, the picker behind the real Envoy.

An adapter requested for 2 replicas is loaded on exactly 2 of 4 simulated pods that lacked
it (two nodes, one collector each, coordinating through the JetStream KV bucket), and
requests naming it then succeed through Envoy and the picker, served by those 2 pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from collector.service import Collector, CollectorConfig
from collector.targets import Target
from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from picker.service import Picker
from shared.natsconn import NatsOptions
from shared.natsd import free_port
from sim.server import PodSpec, SimCluster
from tests.support.pickers import loopback_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

POOL = "pool"


def collector_for(node: str, pods, url: str, spec_path, **kw) -> Collector:
    targets = [Target("default", POOL, p.name, "127.0.0.1", p.port, node) for p in pods]
    return Collector(
        CollectorConfig(
            node_name=node,
            collector_name=f"c-{node}",
            nats=NatsOptions(servers=[url], name=f"collector-{node}"),
            targets=targets,
            ops_port=None,
            models_interval=0.1,
            adapters_file=str(spec_path),
            adapter_sync_interval=0.2,
            adapter_drain=0.3,
            targets_poll_interval=0.2,
            **kw,
        )
    )


@contextlib.asynccontextmanager
async def gateway(url: str, envoy_binary: str, **picker_kw) -> AsyncIterator[tuple[Picker, str]]:
    p = Picker(loopback_config(pool_name=POOL, nats=NatsOptions(servers=[url], name="picker"), **picker_kw))
    await p.start()
    opts = BootstrapOptions(
        pickers=(p.address,),
        picker_health_port=p.health_port,
        listen_address="127.0.0.1",
        listen_port=free_port(),
        admin_port=free_port(),
    )
    try:
        await p.wait_ready(15)
        async with EnvoyProcess(build_bootstrap(opts), envoy_binary):
            yield p, f"http://127.0.0.1:{opts.listen_port}"
    finally:
        await p.stop(grace=0.2)


async def complete(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, str, str]:
    body = {"model": model, "prompt": "hello adapters", "max_tokens": 4}
    async with http.post(f"{url}/v1/completions", json=body) as r:
        text = await r.text()
        return r.status, r.headers.get("x-gateway-destination-endpoint-served", ""), text


async def test_adapter_for_two_replicas_lands_on_exactly_two_pods_and_serves(
    nats_server, envoy_binary, tmp_path
) -> None:
    spec = tmp_path / "adapters.yaml"
    spec.write_text("adapters:\n  - {name: sql-lora, source: /adapters/sql, replicas: 2}\n")
    specs = [PodSpec(name=f"vllm-{i}") for i in range(4)]
    async with SimCluster(specs) as cluster:
        pods = cluster.pods
        assert not any("sql-lora" in p.loras for p in pods)  # nobody has it to begin with
        a = collector_for("node-a", pods[:2], nats_server.url, spec)
        b = collector_for("node-b", pods[2:], nats_server.url, spec)
        await asyncio.gather(a.start(), b.start())
        try:
            await wait_until(lambda: sum("sql-lora" in p.loras for p in pods) == 2, 20, "2 replicas")
            # more passes of both collectors: the count never overshoots
            passes = (a.adapters.passes, b.adapters.passes)
            await wait_until(
                lambda: a.adapters.passes >= passes[0] + 5 and b.adapters.passes >= passes[1] + 5, 20
            )
            holders = [p for p in pods if "sql-lora" in p.loras]
            assert len(holders) == 2
            async with gateway(nats_server.url, envoy_binary) as (picker, url):
                addrs = {p.address for p in holders}
                await wait_until(
                    lambda: (
                        all(
                            "sql-lora" in picker.view.endpoints[x].snapshot.served_models
                            for x in addrs
                            if x in picker.view.endpoints
                        )
                        and addrs <= set(picker.view.endpoints)
                    ),
                    15,
                    "the picker sees where the adapter is",
                )
                async with aiohttp.ClientSession() as http:
                    replies = [await complete(http, url, "sql-lora") for _ in range(12)]
            for status, served, text in replies:
                assert status == 200, text
                assert json.loads(text)["model"] == "sql-lora"
                assert served in addrs, (served, addrs)
        finally:
            await asyncio.gather(a.stop(), b.stop())
