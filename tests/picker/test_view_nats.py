"""The pool view against a real nats-server: bootstrap from last values, ordering, tombstones, outages."""

from __future__ import annotations

import nats
import pytest

from picker.scheduling import PoolState, Profile, SheddingAdmission
from picker.service import Picker
from picker.view import PoolView
from shared.natsconn import NatsOptions, ensure_streams
from shared.schemas import Tombstone, encode
from shared.subjects import Subjects
from tests.support.least_load import LeastLoadScheduler
from tests.support.pickers import loopback_config
from tests.support.snapshots import snapshot
from tests.support.waiting import wait_until

SUBJ = Subjects("infergate")


class Recorder(PoolState):
    """The real pool state, recording what the view applies to it."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[str] = []
        self.removed: list[str] = []

    def on_snapshot(self, snapshot, now):
        self.snapshots.append(snapshot.address)
        super().on_snapshot(snapshot, now)

    def on_endpoint_removed(self, address, now):
        self.removed.append(address)
        super().on_endpoint_removed(address, now)


def recording_profile() -> Profile:
    return Profile("least-load", Recorder(), SheddingAdmission(), LeastLoadScheduler())


def subject(addr: str, pool: str = "pool") -> str:
    ip, port = addr.split(":")
    return SUBJ.endpoint("default", pool, "pod-" + ip.replace(".", "-"), int(port))


async def publish(nc, msg, pool: str = "pool") -> None:
    await nc.publish(subject(msg.address, pool), encode(msg))


@pytest.fixture
async def nc(nats_server):
    conn = await nats.connect(nats_server.url)
    await ensure_streams(conn.jetstream(), SUBJ)
    yield conn
    await conn.close()


def make_picker(url: str) -> Picker:
    cfg = loopback_config(
        nats=NatsOptions(servers=[url], name="picker-test", reconnect_wait=0.1),
    )
    return Picker(cfg, profile=recording_profile())


async def test_bootstraps_from_the_last_value_of_every_endpoint(nats_server, nc):
    for seq in (1, 2, 3):
        await publish(nc, snapshot("10.0.0.1:8000", pool="pool", seq=seq, waiting=seq))
    await publish(nc, snapshot("10.0.0.2:8000", pool="pool", seq=7, waiting=9))
    await publish(nc, snapshot("10.0.0.3:8000", pool="other", seq=1), pool="other")  # another pool
    await nc.flush()
    p = make_picker(nats_server.url)
    assert not p.is_ready()
    await p.start()
    try:
        await p.wait_ready(10)
        # Ready means the bootstrap is complete: both last values are already applied.
        assert set(p.view.endpoints) == {"10.0.0.1:8000", "10.0.0.2:8000"}
        assert p.view.endpoints["10.0.0.1:8000"].snapshot.waiting == 3
        assert p.state.snapshots.count("10.0.0.1:8000") == 1  # only the last value was replayed
        # Then it follows live updates.
        await publish(nc, snapshot("10.0.0.2:8000", pool="pool", seq=8, waiting=1))
        await wait_until(lambda: p.view.endpoints["10.0.0.2:8000"].snapshot.waiting == 1, 5)
    finally:
        await p.stop(grace=0.1)


async def test_empty_pool_is_ready_at_once(nats_server, nc):
    p = make_picker(nats_server.url)
    await p.start()
    try:
        await p.wait_ready(10)
        assert not p.view.endpoints
    finally:
        await p.stop(grace=0.1)


async def test_out_of_order_and_stale_epochs_are_dropped_and_tombstones_remove(nats_server, nc):
    p = make_picker(nats_server.url)
    await p.start()
    try:
        await p.wait_ready(10)

        # One at a time: the stream keeps one message per subject, so a burst may be
        # coalesced before delivery (which is the point of the stream, not a bug).
        def seen() -> int:
            return p.view.accepted + sum(p.view.dropped.values()) + p.view.decoder.failures

        async def one(msg, raw: bytes | None = None) -> None:
            before = seen()
            if raw is None:
                await publish(nc, msg)
            else:
                await nc.publish(subject("10.0.0.1:8000"), raw)
            await wait_until(lambda: seen() > before, 5, "message processed")

        await one(snapshot("10.0.0.1:8000", pool="pool", seq=5, waiting=5, ts=100.0))
        await one(snapshot("10.0.0.1:8000", pool="pool", seq=4, waiting=4, ts=101.0))  # reordered
        await one(snapshot("10.0.0.1:8000", pool="pool", seq=1, epoch="old", waiting=1, ts=99.0))
        await one(None, b"\xc1 garbage")
        await one(snapshot("10.0.0.1:8000", pool="pool", seq=1, epoch="new", waiting=2, ts=102.0))
        assert p.view.decoder.failures == 1 and p.view.dropped["stale"] == 2
        assert p.view.endpoints["10.0.0.1:8000"].snapshot.waiting == 2
        tomb = Tombstone(
            namespace="default", pool="pool", pod="p", address="10.0.0.1:8000", seq=2, epoch="new", ts=103.0
        )
        await one(tomb)
        assert not p.view.endpoints
        assert p.state.removed == ["10.0.0.1:8000"]
        # A snapshot older than the tombstone cannot resurrect the endpoint.
        await one(snapshot("10.0.0.1:8000", pool="pool", seq=1, epoch="new", ts=102.5))
        assert "10.0.0.1:8000" not in p.view.endpoints
        text = p.registry.get_sample_value("infergate_picker_view_decode_failures_total", {"pool": "pool"})
        assert text == 1
    finally:
        await p.stop(grace=0.1)


async def test_outage_keeps_the_view_and_resyncs_after_reconnect(nats_server, nc):
    await publish(nc, snapshot("10.0.0.1:8000", pool="pool", seq=1))
    await nc.flush()
    p = make_picker(nats_server.url)
    await p.start()
    try:
        await p.wait_ready(10)
        subs = p.feed.subscriptions
        nats_server.stop()
        await wait_until(lambda: not p.feed.connected, 10, "disconnect noticed")
        assert set(p.view.endpoints) == {"10.0.0.1:8000"}  # still routing from the last view
        assert p.is_ready()
        nats_server.start()
        await wait_until(lambda: p.feed.connected and p.feed.subscriptions > subs, 15, "re-subscribed")
        conn = await nats.connect(nats_server.url)
        try:
            await publish(conn, snapshot("10.0.0.2:8000", pool="pool", seq=1))
            await wait_until(lambda: "10.0.0.2:8000" in p.view.endpoints, 10, "live again")
        finally:
            await conn.close()
        assert "10.0.0.1:8000" in p.view.endpoints
    finally:
        await p.stop(grace=0.1)


def test_pure_view_ordering_rules():
    sched = Recorder()
    v = PoolView("default", "pool", sched)
    assert v.apply(snapshot("a:1", pool="pool", seq=2, ts=10.0), now=10)
    assert not v.apply(snapshot("a:1", pool="pool", seq=2, ts=11.0), now=11)  # same seq
    assert not v.apply(snapshot("a:1", pool="pool", seq=9, epoch="e0", ts=9.0), now=11)  # other epoch, older
    assert v.apply(snapshot("a:1", pool="pool", seq=1, epoch="e2", ts=12.0), now=12)  # restart, newer
    assert not v.apply(snapshot("a:1", pool="other", seq=5), now=12)
    assert v.dropped == {"stale": 2, "foreign": 1, "invalid": 0}


async def test_peer_sharing_is_wired_on_the_same_connection(nats_server, nc):
    from picker.sharing.settings import SharingSettings

    cfg = loopback_config(
        nats=NatsOptions(servers=[nats_server.url], name="picker-test"),
        sharing=SharingSettings(replica="r1", ready_timeout_s=5),
    )
    p = Picker(cfg, profile=recording_profile())
    await p.start()
    try:
        await p.wait_ready(15)
        assert p.sharing is not None and p.sink is p.sharing.sink
        assert p.sharing.bus is p.feed.bus
    finally:
        await p.stop(grace=0.1)
