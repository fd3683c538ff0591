"""The collector's KV events path: a simulated pod's ZMQ events -> deltas and digests on a real NATS."""

from __future__ import annotations

import asyncio

import aiohttp
import nats
import pytest
import zmq.asyncio

from collector.__main__ import build_parser, config_from_args
from collector.kvevents import (
    ANNOTATION,
    REPLAY_ANNOTATION,
    KVSettings,
    PodKVState,
    PodKVStream,
    kv_addresses,
    kv_settings,
)
from collector.targets import Target, TargetsError, parse_targets
from shared import kvevents as kv
from shared.bus import MemoryBus
from shared.kvstream import kv_digest_feed
from shared.natsbus import NatsBus
from shared.natsconn import NatsOptions
from shared.subjects import Subjects
from shared.tokens import text_for_tokens
from sim.engine import EngineConfig
from sim.kvevents import KVEventsConfig
from sim.pod import PodSpec, SimPod
from tests.collector.test_kube import pool_v1
from tests.support.kubeapi import pod as kube_pod
from tests.support.waiting import wait_until


def _batch(*events) -> kv.EventBatch:
    return kv.EventBatch(0.0, list(events), 0)


def test_state_folds_events_into_one_delta_per_tier():
    st = PodKVState(max_blocks=4)
    st.apply(
        _batch(
            kv.BlockStored([1, 2, 3], None, [], 16, medium="GPU"),
            kv.BlockStored([9], None, [], 16, medium="CPU"),
        )
    )
    st.apply(_batch(kv.BlockRemoved([3, 77]), kv.BlockStored([4, 5, 6], 2, [], 16)))  # 6: over the bound
    d = st.take_delta("a", "e", 1)
    assert d.stored == [1, 2, 4, 5] and d.removed == [] and d.stored_cpu == [9] and st.dropped == 1
    st.apply(_batch(kv.BlockRemoved([1], "GPU")))
    d = st.take_delta("a", "e", 2)
    assert d.removed == [1] and not d.stored and st.gpu == {2, 4, 5}
    st.apply(_batch(kv.AllBlocksCleared(), kv.BlockStored([8], None, [], 16)))
    d = st.take_delta("a", "e", 3)
    assert d.clear and d.stored == [8] and st.gpu == {8} and st.cpu == set()


def test_flush_and_digest_intervals_from_flags_and_env(monkeypatch):
    def settings(argv, env=None):
        for k in ("INFERGATE_KV_FLUSH_INTERVAL", "INFERGATE_KV_DIGEST_INTERVAL"):
            monkeypatch.delenv(k, raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        cfg = config_from_args(build_parser().parse_args(["--target", "p/a=127.0.0.1:1", *argv]))
        cfg.validate()
        return kv_settings(cfg)

    assert (settings([]).flush_interval, settings([]).digest_interval) == (0.02, 1.0)
    s = settings(["--kv-flush-interval", "0.05"], {"INFERGATE_KV_DIGEST_INTERVAL": "0.5"})
    assert (s.flush_interval, s.digest_interval) == (0.05, 0.5)
    with pytest.raises(ValueError, match="KV flush interval"):
        settings(["--kv-flush-interval", "2"])


def test_addresses_from_annotations_and_targets_file():
    ann = {"infergate.io/kv-events": "5557", "infergate.io/kv-replay": "tcp://*:5600"}
    assert kv_addresses(ann, "10.0.0.5", 1) == ("tcp://10.0.0.5:5558", "tcp://10.0.0.5:5601")
    assert kv_addresses({}, "10.0.0.5") == ("", "")
    assert kv_addresses({"infergate.io/kv-events": "x"}, "10.0.0.5") == ("", "")
    [t] = parse_targets(
        [{"pool": "p", "pod": "a", "address": "10.0.0.1:8000", "kv_events": "tcp://10.0.0.1:5557"}], "f"
    )
    assert t.kv_events == "tcp://10.0.0.1:5557" and t.kv_replay == ""
    with pytest.raises(TargetsError, match="kv_events"):
        parse_targets([{"pool": "p", "pod": "a", "address": "10.0.0.1:8000", "kv_events": "http://x"}], "f")


async def _sim_pod(replay: bool = True) -> SimPod:
    cfg = KVEventsConfig(endpoint="tcp://*:0", replay_endpoint="tcp://*:0" if replay else None)
    eng = EngineConfig(model="m", kv_capacity_tokens=2048, max_model_len=4096)
    pod = SimPod(PodSpec(name="kv-0", model="m", engine=eng, time_scale=0.05, kv_events=cfg))
    await pod.start()
    return pod


def _local(addr: str | None) -> str:
    return (addr or "").replace("0.0.0.0", "127.0.0.1")


async def _complete(pod: SimPod, prompt: str) -> None:
    async with aiohttp.ClientSession() as s:
        body = {"model": "m", "prompt": prompt, "max_tokens": 2}
        async with s.post(f"{pod.url}/v1/completions", json=body) as r:
            assert r.status == 200


async def test_gap_is_recovered_from_the_replay_socket_or_resets_the_state():
    pod = await _sim_pod()
    ctx = zmq.asyncio.Context()
    try:
        for i in range(4):
            await _complete(pod, text_for_tokens(100, seed=i))
        pub = pod.kv_publisher
        assert pub.published >= 4
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
        stream = PodKVStream(t, lambda: None, "ep", KVSettings(), ctx)
        payloads = list(pub._buffer)
        seq0, p0 = payloads[0]
        await stream.on_batch(seq0, kv.decode_batch(p0))
        last_seq, last = payloads[-1]
        await stream.on_batch(last_seq, kv.decode_batch(last))  # skips the middle ones
        assert stream.gaps == 1 and stream.recovered == 1 and stream.resets == 0
        assert stream.state.gpu == set(pod.engine.kv.cached)  # nothing lost
        # without a replay socket a gap cannot be filled: the state restarts from what follows
        t2 = Target("default", "pool", "kv-0", "127.0.0.1", pod.port, "", _local(pub.endpoint), "")
        s2 = PodKVStream(t2, lambda: None, "ep", KVSettings(), ctx)
        await s2.on_batch(seq0, kv.decode_batch(p0))
        await s2.on_batch(last_seq, kv.decode_batch(last))
        assert s2.resets == 1 and s2.state.clear
        # a smaller seq: the engine restarted
        await s2.on_batch(0, kv.decode_batch(p0))
        assert s2.resets == 2
    finally:
        ctx.destroy(0)
        await pod.stop()


async def test_events_reach_nats_as_deltas_and_a_digest_kept_in_jetstream(
    make_collector, nats_server, kube_api
):
    """Through Kubernetes discovery: the pod annotations name the KV events and replay ports."""
    pod = await _sim_pod()
    nc = await nats.connect(nats_server.url)
    deltas: list[kv.KVDelta] = []
    subjects = Subjects()

    async def on_delta(msg):
        deltas.append(kv.decode_delta(msg.data))

    await nc.subscribe(subjects.kv_deltas_of_pool("default", "pool"), cb=on_delta)
    try:
        pub = pod.kv_publisher
        await kube_api.upsert(pool_v1(namespace="default", ports=(pod.port,)))
        annotated = kube_pod("kv-0", "127.0.0.1")
        annotated["metadata"]["annotations"] = {
            ANNOTATION: pub.endpoint.rpartition(":")[2],  # a port, taken on the pod IP
            REPLAY_ANNOTATION: "tcp://*:" + pub.replay_endpoint.rpartition(":")[2],
        }
        await kube_api.upsert(annotated)
        await kube_api.upsert(kube_pod("plain", "127.0.0.2"))  # no annotation: not followed
        c = await make_collector(kube_api_server=kube_api.url)
        await c.wait_ready()
        await wait_until(lambda: c.kv.streams, what="the annotated pod followed")
        [t] = [s.target for s in c.kv.streams.values()]
        assert (t.pod, t.kv_events, t.kv_replay) == (
            "kv-0",
            _local(pub.endpoint),
            _local(pub.replay_endpoint),
        )
        await wait_until(
            lambda: c.kv.streams and next(iter(c.kv.streams.values())).need_digest is False,
            what="first digest",
        )
        # a SUB joins asynchronously: requests until a batch has gone through
        stream = next(iter(c.kv.streams.values()))
        for i in range(50):
            await _complete(pod, text_for_tokens(120, seed=100 + i))
            if stream.batches:
                break
        await wait_until(lambda: stream.state.gpu == set(pod.engine.kv.cached), what="collector state")
        await wait_until(lambda: any(d.stored for d in deltas), what="a delta")
        assert all(d.address == t.address and d.epoch == c.epoch for d in deltas)
        assert [d.seq for d in deltas] == sorted(d.seq for d in deltas)
        assert len(c.kv.streams) == 1  # the pod without an address is not followed
        labels = {"namespace": "default", "pool": "pool", "pod": "kv-0"}
        assert c.metrics.registry.get_sample_value("infergate_collector_kv_batches_total", labels) >= 1
        assert c.metrics.registry.get_sample_value("infergate_collector_kv_blocks", labels) == len(
            stream.state.gpu
        )

        # a replica that starts now converges from the stored digest, without history
        bus = await NatsBus.connect(NatsOptions(servers=[nats_server.url]))
        got: list[kv.KVDigest] = []
        feed = kv_digest_feed(
            bus, subjects.kv_digests_of_pool("default", "pool"), lambda s, d: got.append(kv.decode_digest(d))
        )
        task = asyncio.create_task(feed.run())
        await asyncio.wait_for(feed.bootstrapped.wait(), 5)  # the stored digest read, consumer released
        await wait_until(lambda: got and set(got[-1].gpu) == set(pod.engine.kv.cached), what="digest")
        assert got[-1].live and got[-1].block_size == 16 and feed.subscriptions == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()
    finally:
        await nc.close()
        await pod.stop()


async def test_a_nats_outage_drops_deltas_and_resends_a_digest():
    bus = MemoryBus()
    ctx = zmq.asyncio.Context()
    t = Target("default", "pool", "kv-0", "127.0.0.1", 9, "", "tcp://127.0.0.1:1", "")
    stream = PodKVStream(t, lambda: bus, "ep", KVSettings(flush_interval=0.01), ctx)
    got: list[tuple[str, bytes]] = []
    await bus.subscribe(">", lambda s, d: got.append((s, d)))
    task = asyncio.create_task(stream._publish_loop())
    try:
        await wait_until(lambda: got, what="first digest")
        assert ".kvd." in got[0][0]
        bus.set_connected(False)
        await stream.on_batch(0, _batch(kv.BlockStored([1, 2], None, [], 16)))
        await wait_until(lambda: stream.need_digest and not stream.state.has_delta(), what="dropped delta")
        n = len(got)
        bus.set_connected(True)
        await wait_until(lambda: len(got) > n, what="digest after the outage")
        assert ".kvd." in got[n][0] and set(kv.decode_digest(got[n][1]).gpu) == {1, 2}
    finally:
        task.cancel()
        ctx.destroy(0)
