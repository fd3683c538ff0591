"""The pool view fed by a real collector (collector/) scraping fake vLLM pods over a real nats-server."""

from __future__ import annotations

from collector.service import Collector, CollectorConfig
from collector.targets import Target
from picker.service import Picker
from shared.natsconn import NatsOptions
from tests.support.fakepod import FakePods
from tests.support.least_load import least_load_profile
from tests.support.pickers import loopback_config
from tests.support.waiting import wait_until


async def test_view_follows_a_real_collector(nats_server):
    async with FakePods(2) as pods:
        pods[0].state.engines[0].waiting = 3
        targets = [Target("default", "pool", p.name, "127.0.0.1", p.port) for p in pods]
        collector = Collector(
            CollectorConfig(
                node_name="n1", nats=NatsOptions(servers=[nats_server.url]), targets=targets, ops_port=None
            )
        )
        await collector.start()
        p = Picker(
            loopback_config(
                nats=NatsOptions(servers=[nats_server.url], name="picker"),
            ),
            profile=least_load_profile(),
        )
        try:
            await collector.wait_ready()
            await p.start()
            await p.wait_ready(10)
            await wait_until(lambda: set(p.view.endpoints) == {t.address for t in targets}, 10, "both pods")
            await wait_until(lambda: p.view.endpoints[targets[0].address].snapshot.waiting == 3, 10)
            pods[1].state.engines[0].kv_usage = 0.5
            await wait_until(lambda: p.view.endpoints[targets[1].address].snapshot.kv_usage == 0.5, 10)
            collector.apply(targets[:1])  # the second pod leaves: a tombstone
            await wait_until(lambda: set(p.view.endpoints) == {targets[0].address}, 10, "tombstone")
            assert p.view.tombstones >= 1
            assert p.view.stats()["max_age"] < 5
        finally:
            await p.stop(grace=0.1)
            await collector.stop()
