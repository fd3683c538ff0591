"""The adapter reconciler on one node: a real Collector (in-memory bus and KV) and simulated vLLM pods."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from collector.service import Collector, CollectorConfig
from shared.bus import MemoryBus
from shared.kvstore import MemoryKv
from shared.subjects import Subjects
from sim.engine import EngineConfig
from sim.server import PodSpec, SimCluster
from tests.collector.conftest import targets_of
from tests.support.waiting import wait_until

BASE = "meta-llama/Llama-2-7b-hf"


def engine(**kw) -> EngineConfig:
    return EngineConfig(model=BASE, **kw)


@contextlib.asynccontextmanager
async def node(pods, spec_path, kv=None, **cfg) -> AsyncIterator[Collector]:
    config = CollectorConfig(
        node_name="n1",
        collector_name="c1",
        targets=targets_of(pods, pool="llama"),
        ops_port=None,
        models_interval=0.1,
        adapters_file=str(spec_path),
        adapter_sync_interval=0.1,
        adapter_drain=0.3,
        targets_poll_interval=0.1,
        **cfg,
    )
    c = Collector(config, bus=MemoryBus(Subjects()), adapter_kv=kv or MemoryKv())
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def write(path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def ops(c: Collector, op: str, outcome: str) -> float:
    return (
        c.metrics.registry.get_sample_value(
            "infergate_collector_adapter_operations_total", {"op": op, "outcome": outcome}
        )
        or 0.0
    )


async def test_loads_where_lacking_within_max_loras_and_leaves_foreign_adapters(tmp_path) -> None:
    spec = tmp_path / "adapters.yaml"
    write(
        spec,
        "adapters:\n  - {name: a, source: /ad/a, replicas: 2}\n  - {name: b, source: /ad/b, replicas: 2}\n",
    )
    specs = [
        PodSpec(name="p0", lora_adapters=["x"], engine=engine(max_loras=2, max_cpu_loras=4)),
        PodSpec(name="p1", engine=engine(max_loras=2, max_cpu_loras=4)),
        PodSpec(name="p2", engine=engine(max_loras=2, max_cpu_loras=4)),
    ]
    async with SimCluster(specs) as cluster, node(cluster.pods, spec) as c:
        p0 = cluster.pods[0]
        await wait_until(
            lambda: sum(len({"a", "b"} & set(p.loras)) for p in cluster.pods) == 4, 10, "4 replicas placed"
        )
        for p in cluster.pods:
            assert len(p.loras) <= 2, p.loras  # max_loras of every server respected
        assert "x" in p0.loras  # a hand-loaded adapter is never touched
        assert len(p0.loras) == 2  # one free slot, filled
        await asyncio.sleep(0.5)  # a few more passes: nothing overshoots
        assert sum(len({"a", "b"} & set(p.loras)) for p in cluster.pods) == 4
        assert ops(c, "load", "ok") == 4  # no server was asked twice
        assert (
            c.metrics.registry.get_sample_value(
                "infergate_collector_adapter_placed_replicas",
                {"namespace": "default", "pool": "llama", "adapter": "a"},
            )
            == 2
        )
        # fewer replicas: one holder released, unloaded (idle), the other stays
        write(
            spec,
            "adapters:\n  - {name: a, source: /ad/a, replicas: 1}\n"
            "  - {name: b, source: /ad/b, replicas: 2}\n",
        )
        await wait_until(lambda: sum("a" in p.loras for p in cluster.pods) == 1, 10, "a down to 1")
        assert sum("b" in p.loras for p in cluster.pods) == 2 and "x" in p0.loras
        await wait_until(lambda: ops(c, "unload", "ok") == 1, 5, "the unload counted")


async def test_failed_loads_back_off_then_the_claim_moves(tmp_path) -> None:
    spec = tmp_path / "adapters.yaml"
    write(spec, "adapters:\n  - {name: a, source: /ad/a, replicas: 1}\n")
    specs = [
        PodSpec(name="p0", engine=engine(enable_lora=False)),  # answers 400 to every load
        PodSpec(name="p1", engine=engine()),
    ]
    # p0 is tried first (the claim step takes the sorted-first server of equal room)
    async with SimCluster(specs) as cluster, node(cluster.pods, spec, adapter_slots=4) as c:
        await wait_until(lambda: "a" in cluster.pods[1].loras, 15, "a loaded on the healthy pod")
        assert ops(c, "load", "error") == 3  # max_failures attempts, with backoff in between
        assert "a" not in cluster.pods[0].loras


async def test_unload_waits_for_the_running_request(tmp_path) -> None:
    spec = tmp_path / "adapters.yaml"
    write(spec, "adapters:\n  - {name: a, source: /ad/a, replicas: 1}\n")
    async with SimCluster(n=1, time_scale=2.0) as cluster, node(cluster.pods, spec) as c:
        pod = cluster.pods[0]
        await wait_until(lambda: "a" in pod.loras, 10, "a loaded")
        async with aiohttp.ClientSession() as http:
            body = {"model": "a", "prompt": "hello " * 20, "max_tokens": 200}
            req = asyncio.ensure_future(http.post(f"{pod.url}/v1/completions", json=body))
            await wait_until(lambda: "a" in pod.engine.running_loras, 5, "request running")
            write(spec, "adapters: []\n")
            seen_running_after_release = False
            while not req.done():
                if "a" in pod.engine.running_loras:
                    assert "a" in pod.loras, "unloaded under a running request"
                    seen_running_after_release = seen_running_after_release or c.adapters._draining != {}
                await asyncio.sleep(0.02)
            resp = await req
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["usage"]["completion_tokens"] == 200
            resp.release()
        assert seen_running_after_release  # the release had started while the request ran
        await wait_until(lambda: "a" not in pod.loras, 10, "a unloaded once idle")
        await wait_until(lambda: ops(c, "unload", "ok") == 1, 5, "the unload counted")


@pytest.mark.parametrize("bad", ["adapters: [{name: a}]\n", "adapters: [\n"])
async def test_a_broken_spec_keeps_the_previous_one(tmp_path, bad) -> None:
    spec = tmp_path / "adapters.yaml"
    write(spec, "adapters:\n  - {name: a, source: /ad/a, replicas: 1}\n")
    async with SimCluster(n=1) as cluster, node(cluster.pods, spec):
        await wait_until(lambda: "a" in cluster.pods[0].loras, 10, "a loaded")
        write(spec, bad)
        await asyncio.sleep(0.5)
        assert "a" in cluster.pods[0].loras


async def test_a_dead_nodes_claims_expire_and_another_node_takes_over(tmp_path) -> None:
    spec = tmp_path / "adapters.yaml"
    write(spec, "adapters:\n  - {name: a, source: /ad/a, replicas: 1}\n")
    kv = MemoryKv()
    async with SimCluster(n=2) as cluster:
        p0, p1 = cluster.pods
        async with node([p0], spec, kv, adapter_holder_ttl=1.0) as a:
            await wait_until(lambda: "a" in p0.loras, 10, "node a placed it")
            b_cfg = CollectorConfig(
                node_name="n2", collector_name="c2", targets=targets_of([p1], pool="llama"),
                ops_port=None, models_interval=0.1, adapters_file=str(spec),
                adapter_sync_interval=0.1, adapter_holder_ttl=1.0,
            )  # fmt: skip
            b = Collector(b_cfg, bus=MemoryBus(Subjects()), adapter_kv=kv)
            await b.start()
            try:
                await wait_until(lambda: b.adapters is not None and b.adapters.passes >= 5, 10)
                assert "a" not in p1.loras  # one replica wanted, node a holds it: b stays out
                await a.stop()  # node a's collector dies: its claim is no longer confirmed
                await wait_until(lambda: "a" in p1.loras, 15, "node b took the replica over")
            finally:
                await b.stop()


async def test_orphaned_copies_beyond_the_replicas_are_unloaded(tmp_path) -> None:
    """Copies of a managed adapter that no record holds (a lost record, a dead owner) are surplus."""
    spec = tmp_path / "adapters.yaml"
    write(spec, "adapters:\n  - {name: a, source: /ad/a, replicas: 1}\n")
    specs = [PodSpec(name=f"p{i}", lora_adapters=["a", "x"], engine=engine(max_loras=4)) for i in range(3)]
    async with SimCluster(specs) as cluster, node(cluster.pods, spec) as c:
        await wait_until(lambda: sum("a" in p.loras for p in cluster.pods) == 1, 10, "one copy of a left")
        assert all("x" in p.loras for p in cluster.pods)  # not ours to manage: never touched
        assert ops(c, "unload", "ok") == 2 and ops(c, "load", "ok") == 0
