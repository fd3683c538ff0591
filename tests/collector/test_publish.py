"""Scraping and publishing against a real nats-server and real HTTP model servers."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.js.api import DeliverPolicy

from shared import schemas
from shared.subjects import Subjects
from tests.collector.conftest import Subscriber, model_servers, targets_of
from tests.support.fakepod import FakePods
from tests.support.waiting import wait_until


async def test_update_reaches_a_subscriber(make_collector, subscriber):
    async with FakePods(2) as pods:
        c = await make_collector(targets=targets_of(pods))
        await c.wait_ready()
        await wait_until(
            lambda: subscriber.last("pod-0") and subscriber.last("pod-1"), what="first snapshots"
        )
        first = subscriber.last("pod-0")
        assert isinstance(first, schemas.EndpointSnapshot)
        assert (first.namespace, first.pool, first.pod) == ("default", "pool", "pod-0")
        assert first.address == pods[0].address
        assert first.node == "node-a" and first.collector == "node-a/test"
        assert first.epoch == c.epoch and len(c.epoch) == 16
        assert first.healthy and first.model == "meta-llama/Llama-2-7b-hf"
        assert first.kv_capacity_tokens == 7463 * 16
        assert abs(first.ts - time.time()) < 5

        pods[0].state.engines[0].waiting = 7
        pods[0].state.engines[0].kv_usage = 0.5
        pods[0].state.running_loras = ["sql-lora"]
        t0 = time.monotonic()
        await wait_until(lambda: subscriber.last("pod-0").waiting == 7, what="the update")
        latency = time.monotonic() - t0
        snap = subscriber.last("pod-0")
        assert snap.kv_usage == 0.5 and snap.lora.running == ["sql-lora"] and snap.lora.max_lora == 4
        assert latency < 1.0  # published on change, not at the next heartbeat
        seqs = [m.seq for m in subscriber.snapshots("pod-0")]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] >= 1
        # the other pod did not change: no publishes beyond its first one(s) and heartbeats
        assert all(m.waiting == 0 for m in subscriber.snapshots("pod-1"))


async def test_new_subscriber_bootstraps_last_values_from_jetstream(make_collector, nats_server):
    async with FakePods(3) as pods:
        for i, p in enumerate(pods):
            p.state.engines[0].waiting = 10 + i
        c = await make_collector(targets=targets_of(pods))
        await c.wait_ready()
        await wait_until(lambda: c.publisher.streams_ready and len(c.publisher.seq) == 3)
        pods[2].state.engines[0].waiting = 99  # the newest value must be the one bootstrapped
        await wait_until(lambda: c.publisher.latest[("default", "pool", "pod-2", pods[2].port)].waiting == 99)
        await asyncio.sleep(0.3)

        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        got: dict[str, schemas.EndpointSnapshot] = {}
        decoder = schemas.endpoint_decoder()

        async def on_msg(msg):
            m = decoder.decode(msg.data)
            got[msg.subject] = m

        await js.subscribe(
            Subjects().all_endpoints(),
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        await wait_until(lambda: len(got) == 3, what="one message per endpoint")
        by_pod = {m.pod: m for m in got.values()}
        assert {p: m.waiting for p, m in by_pod.items()} == {"pod-0": 10, "pod-1": 11, "pod-2": 99}
        info = await js.stream_info(Subjects().endpoint_stream)
        assert info.config.max_msgs_per_subject == 1
        await nc.close()


async def test_heartbeat_when_nothing_changes(make_collector, subscriber):
    async with FakePods(1) as pods:
        await make_collector(targets=targets_of(pods), heartbeat_interval=0.25)
        await wait_until(lambda: subscriber.last("pod-0"))
        await asyncio.sleep(1.1)
        snaps = subscriber.snapshots("pod-0")
        assert 4 <= len(snaps) <= 9, len(snaps)
        assert [s.seq for s in snaps] == list(range(snaps[0].seq, snaps[0].seq + len(snaps)))
        assert snaps[-1].ts > snaps[0].ts + 0.7  # heartbeats carry the latest scrape time


async def test_killed_pod_becomes_unhealthy_then_tombstoned(make_collector, subscriber):
    async with model_servers(3) as pods:
        # idle pods: the fast rate pinned, since the others' scrape count is checked below
        c = await make_collector(targets=targets_of(pods), unhealthy_after=3, idle_scrape_interval=0)
        await wait_until(lambda: all(subscriber.last(p.name) for p in pods), what="first snapshots")
        victim = pods[1]
        await victim.stop()
        t0 = time.monotonic()
        await wait_until(
            lambda: subscriber.last(victim.name).healthy is False, what="unhealthy verdict", deadline_s=5
        )
        assert time.monotonic() - t0 < 2.0
        bad = subscriber.last(victim.name)
        assert bad.consecutive_failures >= 3 and bad.scrape_error.startswith("connect:")
        assert bad.model  # the last known values are kept; only the verdict changed
        # the others are unaffected and still healthy, scraped at full rate
        scrapes = {p.name: c.scrapers[("default", "pool", p.name, p.port)].scrapes for p in pods}
        await asyncio.sleep(0.5)
        for p in (pods[0], pods[2]):
            assert subscriber.last(p.name).healthy
            assert c.scrapers[("default", "pool", p.name, p.port)].scrapes - scrapes[p.name] >= 5
        # the endpoint is still tracked, not deleted, until discovery removes it
        assert ("default", "pool", victim.name, victim.port) in c.scrapers
        c.apply(
            targets_of([pods[0], pods[2]]), {("default", "pool", victim.name, victim.port): "pod deleted"}
        )
        await wait_until(
            lambda: isinstance(subscriber.last(victim.name), schemas.Tombstone), what="tombstone"
        )
        tomb = subscriber.last(victim.name)
        assert tomb.reason == "pod deleted" and tomb.address == victim.address
        assert tomb.seq == bad.seq + 1 or tomb.seq > bad.seq
        await asyncio.sleep(0.3)
        assert isinstance(subscriber.last(victim.name), schemas.Tombstone)  # nothing after it


async def test_pod_recovers_after_restart(make_collector, subscriber):
    async with FakePods(1) as pods:
        await make_collector(targets=targets_of(pods))
        await wait_until(lambda: subscriber.last("pod-0"))
        await pods[0].stop()
        await wait_until(lambda: subscriber.last("pod-0").healthy is False)
        await pods[0].start()
        await wait_until(lambda: subscriber.last("pod-0").healthy is True, what="healthy again")
        last = subscriber.last("pod-0")
        assert last.consecutive_failures == 0 and last.scrape_error == ""


async def test_slow_pod_never_delays_the_others(make_collector, subscriber):
    async with FakePods(3) as pods:
        pods[0].delay_s = 2.0  # beyond the 0.3 s scrape timeout: every scrape times out
        c = await make_collector(targets=targets_of(pods), scrape_interval=0.05, idle_scrape_interval=0)
        await asyncio.sleep(0.3)
        before = {p.name: p.scrapes for p in pods}
        await asyncio.sleep(1.0)
        for p in pods[1:]:
            rate = p.scrapes - before[p.name]
            assert 14 <= rate <= 26, (p.name, rate)  # ~20 Hz despite pod-0
        await wait_until(lambda: subscriber.last("pod-0") and subscriber.last("pod-0").healthy is False)
        assert subscriber.last("pod-0").scrape_error.startswith("timeout:")
        assert c.metrics.scrape_errors.labels("default", "pool", "pod-0", "timeout")._value.get() >= 3


async def test_garbage_and_http_errors_make_an_endpoint_unhealthy(make_collector, subscriber):
    async with FakePods(2) as pods:
        pods[0].garbage = b"<html>definitely not prometheus</html>"
        pods[1].status = 500
        await make_collector(targets=targets_of(pods))
        await wait_until(lambda: subscriber.last("pod-0") and subscriber.last("pod-1"))
        assert subscriber.last("pod-0").healthy is False
        assert subscriber.last("pod-0").scrape_error.startswith("parse:")
        assert subscriber.last("pod-1").scrape_error == "http: HTTP 500"
        pods[0].garbage = None
        await wait_until(lambda: subscriber.last("pod-0").healthy)


async def test_nats_outage_loses_no_endpoint(make_collector, nats_server):
    async with model_servers(3) as pods, FakePods(1, name_prefix="extra") as extra:
        all_targets = targets_of(pods) + targets_of(extra)
        c = await make_collector(targets=all_targets, heartbeat_interval=0.5)
        await c.wait_ready()
        await wait_until(lambda: len(c.publisher.seq) == 4, what="all endpoints published")

        nats_server.stop()
        await wait_until(lambda: not c.publisher.connected, what="disconnect noticed")
        scrapes = {k: s.scrapes for k, s in c.scrapers.items()}
        extra[0].state.engines[0].waiting = 42  # a change during the outage
        # scraping continues through the outage; nothing is buffered beyond the latest per endpoint
        await wait_until(
            lambda: all(c.scrapers[k].scrapes - n >= 8 for k, n in scrapes.items()),
            what="scrapes during the outage",
            deadline_s=30,
        )
        assert c.publisher.backlog <= 4
        assert c.metrics.publish_deferred._value.get() > 0
        # an endpoint that leaves during the outage gets its tombstone after it
        gone = targets_of(pods)[2]
        c.apply([t for t in all_targets if t != gone], {gone.key: "pod deleted"})

        await asyncio.to_thread(nats_server.start)
        await wait_until(lambda: c.publisher.connected, what="reconnect", deadline_s=15)
        await wait_until(lambda: c.publisher.backlog == 0 and c.publisher.streams_ready)

        # A subscriber that starts now bootstraps every endpoint from JetStream.
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        got: dict[str, object] = {}
        decoder = schemas.endpoint_decoder()

        async def on_msg(msg):
            got[msg.subject] = decoder.decode(msg.data)

        await js.subscribe(
            Subjects().all_endpoints(),
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        await wait_until(lambda: len(got) == 4, what="all four subjects in the stream", deadline_s=10)
        by_pod = {m.pod: m for m in got.values()}
        assert isinstance(by_pod[gone.pod], schemas.Tombstone)
        assert by_pod[gone.pod].reason == "pod deleted"
        for t in all_targets:
            if t != gone:
                assert isinstance(by_pod[t.pod], schemas.EndpointSnapshot) and by_pod[t.pod].healthy
        assert by_pod["extra-0"].waiting == 42
        assert c.metrics.publishes.labels("snapshot", "reconnect")._value.get() >= 3
        await nc.close()


async def test_seq_continues_when_an_endpoint_comes_back_and_epochs_differ(make_collector, subscriber):
    async with FakePods(1) as pods:
        targets = targets_of(pods)
        c1 = await make_collector(targets=targets)
        await wait_until(lambda: subscriber.last("pod-0"))
        c1.apply([], {})
        await wait_until(lambda: isinstance(subscriber.last("pod-0"), schemas.Tombstone))
        tomb_seq = subscriber.last("pod-0").seq
        c1.apply(targets, {})
        await wait_until(lambda: isinstance(subscriber.last("pod-0"), schemas.EndpointSnapshot))
        assert subscriber.last("pod-0").seq == tomb_seq + 1
        c2 = await make_collector(targets=targets, collector_name="other")
        assert c2.epoch != c1.epoch
        await wait_until(lambda: any(m.epoch == c2.epoch for m in subscriber.by_pod["pod-0"]))


async def test_stop_closes_nats_without_tombstones(make_collector, nats_server):
    async with FakePods(2) as pods:
        c = await make_collector(targets=targets_of(pods))
        await c.wait_ready()
        sub = await Subscriber().start(nats_server.url)
        await wait_until(lambda: sub.last("pod-0") and sub.last("pod-1"))
        nc = c.bus.nc
        await c.stop()
        assert nc.is_closed
        assert all(s.task.done() for s in c.scrapers.values())
        await asyncio.sleep(0.2)
        assert not any(isinstance(m, schemas.Tombstone) for m in sub.messages)
        await sub.close()


async def test_collector_starts_before_nats_and_publishes_once_it_is_up(
    make_collector, nats_server, tmp_path
):
    nats_server.stop()
    async with FakePods(1) as pods:
        c = await make_collector(targets=targets_of(pods))
        await asyncio.sleep(0.5)
        assert not c.ready() and c.health.failing() == ["nats"]
        assert c.scrapers[("default", "pool", "pod-0", pods[0].port)].scrapes >= 3  # scraping anyway
        await asyncio.to_thread(nats_server.start)
        await c.wait_ready(15)
        sub = await Subscriber().start(nats_server.url)
        await wait_until(lambda: sub.last("pod-0"), deadline_s=5)
        await sub.close()


async def test_without_jetstream_core_publishing_still_works(make_collector):
    from shared.natsconn import NatsOptions
    from shared.natsd import find_binary, free_port, wait_for_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port),  # no -js
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port)
        url = f"nats://127.0.0.1:{port}"
        sub = await Subscriber().start(url)
        async with FakePods(1) as pods:
            c = await make_collector(targets=targets_of(pods), nats=NatsOptions(servers=[url]))
            await c.wait_ready()
            await wait_until(lambda: sub.last("pod-0"), what="a core NATS snapshot")
            await wait_until(lambda: c.metrics.stream_errors._value.get() >= 1, what="stream error counted")
            assert not c.publisher.streams_ready
            await c.stop()
        await sub.close()
    finally:
        proc.terminate()
        await proc.wait()


async def test_ip_reuse_and_address_change_keep_receivers_ordering_per_address(make_collector, subscriber):
    """Receivers order updates per address: a new pod on a departed pod's IP continues its
    seq, and a pod that moves to a new IP tombstones its old address."""
    from collector.targets import Target

    async with FakePods(2) as pods:
        a = Target("default", "pool", "pod-a", "127.0.0.1", pods[0].port)
        c = await make_collector(targets=[a])
        await wait_until(lambda: subscriber.last("pod-a"))
        c.apply([], {a.key: "pod deleted"})
        await wait_until(lambda: isinstance(subscriber.last("pod-a"), schemas.Tombstone))
        tomb = subscriber.last("pod-a")
        # another pod gets the same IP:port
        b = Target("default", "pool", "pod-b", "127.0.0.1", pods[0].port)
        c.apply([b], {})
        await wait_until(lambda: subscriber.last("pod-b"))
        assert subscriber.last("pod-b").address == tomb.address
        assert subscriber.snapshots("pod-b")[0].seq == tomb.seq + 1
        # pod-b keeps its name but moves to another address: the old one is tombstoned first
        from tests.support.fakepod import FakePod

        other_ip = await FakePod("moved", pods[0].port, host="127.0.0.2").start()
        moved = Target("default", "pool", "pod-b", "127.0.0.2", pods[0].port)  # same key, new IP
        n = len(subscriber.by_pod["pod-b"])
        c.apply([moved], {})
        await wait_until(lambda: subscriber.last("pod-b").address == moved.address, what="new address")
        await other_ip.stop()
        after = subscriber.by_pod["pod-b"][n:]
        assert isinstance(after[0], schemas.Tombstone)
        assert after[0].address == b.address and after[0].reason == "address changed"
        assert isinstance(after[-1], schemas.EndpointSnapshot) and after[-1].seq == 1  # a new address


async def test_publisher_ordering_rules_over_the_memory_bus():
    from collector.metrics import CollectorMetrics
    from collector.publisher import Publisher
    from shared.bus import MemoryBus

    bus = MemoryBus(Subjects())
    sent = []
    await bus.subscribe(
        ">", lambda subject, data: sent.append((subject, schemas.endpoint_decoder().decode(data)))
    )
    jobs = []
    pub = Publisher(
        Subjects(),
        "e1",
        "n/c",
        CollectorMetrics(),
        spawn=lambda name, job: jobs.append(asyncio.create_task(job())),
    )
    pub.attach(bus)
    key = ("ns", "p", "pod", 8000)

    def snap(addr, waiting):
        return schemas.EndpointSnapshot(namespace="ns", pool="p", pod="pod", address=addr, waiting=waiting)

    # coalescing: only the latest snapshot per endpoint goes out
    pub.offer(key, snap("10.0.0.1:8000", 1), "change")
    pub.offer(key, snap("10.0.0.1:8000", 2), "change")
    await pub.drain()
    assert [m.waiting for _, m in sent] == [2]
    # removal drops an unpublished snapshot; a tombstone then a newer snapshot both go out, in order
    pub.offer(key, snap("10.0.0.1:8000", 3), "change")
    pub.remove(key, schemas.Tombstone(namespace="ns", pool="p", pod="pod", address="10.0.0.1:8000"))
    pub.offer(key, snap("10.0.0.9:8000", 4), "change")
    await pub.drain()
    kinds = [(type(m).__name__, m.address, m.seq) for _, m in sent[1:]]
    assert kinds == [("Tombstone", "10.0.0.1:8000", 2), ("EndpointSnapshot", "10.0.0.9:8000", 1)]
    assert all(m.epoch == "e1" and m.collector == "n/c" for _, m in sent)
    # while disconnected nothing is handed to the bus, and only the latest is kept
    bus.set_connected(False)
    for w in range(5, 50):
        pub.offer(key, snap("10.0.0.9:8000", w), "change")
    await pub.drain()
    assert len(sent) == 3 and pub.backlog == 1
    # The reconnect queues a resync (streams, then republish all) and holds publishing until
    # the streams exist again: a message sent earlier could miss a stream the server lost.
    bus.set_connected(True)
    await pub.drain()
    assert len(sent) == 3
    await asyncio.gather(*jobs)
    assert len(jobs) == 1 and pub.streams_ready
    await pub.drain()
    assert (len(sent), sent[-1][1].waiting, sent[-1][1].seq) == (4, 49, 2)
    assert pub.metrics.publishes.labels("snapshot", "reconnect")._value.get() == 1


async def test_collector_over_the_memory_bus_publishes_and_republishes_after_an_outage():
    """The whole service (real HTTP pods, discovery, scrapers) with the in-memory bus: the
    snapshots, nothing handed to the bus during an outage, every pod's latest state after it
    (the publisher's own test above proves the reconnect resync itself)."""
    from collector.service import Collector, CollectorConfig
    from shared.bus import MemoryBus

    bus = MemoryBus(Subjects())
    got: list = []
    await bus.subscribe(">", lambda subject, data: got.append(schemas.endpoint_decoder().decode(data)))
    async with FakePods(2) as pods:
        cfg = CollectorConfig(node_name="n", collector_name="c", targets=targets_of(pods), ops_port=None)
        c = Collector(cfg, bus=bus)
        await c.start()
        try:
            await c.wait_ready()
            await wait_until(lambda: {m.pod for m in got} == {"pod-0", "pod-1"}, what="first snapshots")
            bus.set_connected(False)
            await wait_until(lambda: not c.ready(), what="the outage noticed")
            pods[0].state.engines[0].waiting = 5
            await wait_until(lambda: c.publisher.latest[targets_of(pods)[0].key].waiting == 5)
            assert not any(m.waiting == 5 for m in got)  # nothing handed to a bus that is down
            n = len(got)
            bus.set_connected(True)
            await wait_until(lambda: {m.pod for m in got[n:]} == {"pod-0", "pod-1"}, what="publishing again")
            assert any(m.pod == "pod-0" and m.waiting == 5 for m in got[n:])
        finally:
            await c.stop()
        assert c.bus is bus  # an injected bus is the caller's: left open
    assert not any(isinstance(m, schemas.Tombstone) for m in got)
