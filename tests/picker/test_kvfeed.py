"""KV events end to end below Envoy: sim pod -> collector -> real NATS -> pickers' precise index."""

from __future__ import annotations

import aiohttp

from collector.service import Collector, CollectorConfig
from collector.targets import Target
from picker.service import Picker
from shared.natsconn import NatsOptions
from shared.tokens import text_for_tokens
from sim.engine import EngineConfig
from sim.kvevents import KVEventsConfig
from sim.pod import PodSpec, SimPod
from tests.support.pickers import loopback_config
from tests.support.waiting import wait_until


def _local(addr: str | None) -> str:
    return (addr or "").replace("0.0.0.0", "127.0.0.1")


async def _complete(pod: SimPod, seed: int) -> None:
    async with aiohttp.ClientSession() as s:
        body = {"model": "m", "prompt": text_for_tokens(100, seed=seed), "max_tokens": 2}
        async with s.post(f"{pod.url}/v1/completions", json=body) as r:
            assert r.status == 200


def _picker(url: str, name: str) -> Picker:
    nats = NatsOptions(servers=[url], reconnect_wait=0.1)
    return Picker(loopback_config(nats=nats, profile="precise-prefix", replica_name=name, sharing=None))


async def test_pickers_converge_restart_and_fall_back_when_nats_is_out(nats_server):
    cfg = KVEventsConfig(endpoint="tcp://*:0", replay_endpoint="tcp://*:0")
    eng = EngineConfig(model="m", kv_capacity_tokens=4096, max_model_len=4096)
    pod = SimPod(PodSpec(name="kv-0", model="m", engine=eng, time_scale=0.05, kv_events=cfg))
    await pod.start()
    pub = pod.kv_publisher
    t = Target(
        "default",
        "pool",
        "kv-0",
        "127.0.0.1",
        pod.port,
        "",
        _local(pub.endpoint),
        _local(pub.replay_endpoint),
    )
    nats = NatsOptions(servers=[nats_server.url], reconnect_wait=0.1)
    # digests every 0.25 s and a 1 s staleness (defaults 1 s / 3 s): the outage below is
    # noticed in a third of the time, with the same margin of four digests per window
    collector_cfg = CollectorConfig(
        node_name="n", collector_name="c", nats=nats, ops_port=None, targets=[t], kv_digest_interval=0.25
    )
    c = Collector(collector_cfg)
    await c.start()
    p1 = _picker(nats_server.url, "p1")
    await p1.start()
    p1.kv_index.stale_after_s = 1.0
    p2: Picker | None = None
    try:
        await c.wait_ready()
        stream = next(iter(c.kv.streams.values()))
        for i in range(50):  # until the collector's SUB has joined and a batch went through
            await _complete(pod, i)
            if stream.batches:
                break
        cached = lambda: set(pod.engine.kv.cached)  # noqa: E731
        address = t.address

        def holds(p: Picker) -> bool:
            pk = p.kv_index.pods.get(address)
            return pk is not None and pk.live and pk.gpu == cached() and p.kv_index.is_live(address, _now())

        await wait_until(lambda: holds(p1), what="first picker converged")
        # a replica started now converges from the digest kept in JetStream
        p2 = _picker(nats_server.url, "p2")
        await p2.start()
        await wait_until(lambda: holds(p2), what="second picker converged")
        page = p1.registry.get_sample_value("infergate_picker_kv_index_blocks")
        assert page == len(cached())
        # the precise path's bounded tables, as the picker's others (shared/tables.py)
        table = lambda m, t: p1.registry.get_sample_value(f"infergate_picker_kv_table_{m}", {"table": t})  # noqa: E731
        assert table("entries", "kv_index_blocks") == len(cached())
        assert (
            table("limit", "tokenize_cache_chunks") == 8192 and table("entries", "tokenize_cache_chunks") == 0
        )

        # NATS out: digests stop, the pod is no longer live: the approximate path takes over
        nats_server.stop()
        await wait_until(lambda: not p1.kv_index.is_live(address, _now()), what="precise path off")
        nats_server.start()
        await wait_until(lambda: holds(p1), deadline_s=20, what="precise path back")
    finally:
        for p in (p1, p2):
            if p is not None:
                await p.stop(grace=0.5)
        await c.stop()
        await pod.stop()


def _now() -> float:
    import time

    return time.time()
