"""The collector publishes the models a server answers to, read from its /v1/models."""

from __future__ import annotations

import aiohttp

from sim.server import SimCluster
from tests.collector.conftest import targets_of
from tests.support.waiting import wait_until

BASE = "meta-llama/Llama-2-7b-hf"


async def test_served_models_follow_adapter_loads(make_collector, subscriber):
    async with SimCluster(n=2, lora_adapters=["sql-lora"]) as cluster:
        pods = cluster.pods
        c = await make_collector(targets=targets_of(pods))
        await c.wait_ready()
        await wait_until(
            lambda: (s := subscriber.last(pods[0].name)) and s.served_models, what="a model list"
        )
        assert subscriber.last(pods[0].name).served_models == sorted([BASE, "sql-lora"])
        # The metrics only show running/waiting adapters; /v1/models shows loaded ones too.
        assert subscriber.last(pods[0].name).lora.running == []

        async with aiohttp.ClientSession() as http:
            url = f"http://{pods[1].address}/v1/load_lora_adapter"
            async with http.post(url, json={"lora_name": "chat-lora", "lora_path": "/adapters/chat"}) as r:
                assert r.status == 200, await r.text()
        await wait_until(
            lambda: (s := subscriber.last(pods[1].name)) is not None and "chat-lora" in s.served_models,
            what="the new adapter",
        )
        assert "chat-lora" not in subscriber.last(pods[0].name).served_models


async def test_models_are_not_read_when_disabled(make_collector, subscriber):
    async with SimCluster(n=1, lora_adapters=["sql-lora"]) as cluster:
        c = await make_collector(targets=targets_of(cluster.pods), models_interval=0)
        await c.wait_ready()
        await wait_until(lambda: subscriber.last(cluster.pods[0].name), what="a snapshot")
        assert subscriber.last(cluster.pods[0].name).served_models == []
