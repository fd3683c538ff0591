"""Batching, the bounded buffer and heartbeats of the publisher, against a recording client."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from picker.scheduling import RequestInfo
from picker.sharing import EventBatcher, PeerPublisher, SharingSettings
from shared.bus import BusError, MemoryBus
from shared.schemas import Assignment, Completion, EventBatch, event_decoder
from shared.subjects import Subjects
from tests.support.waiting import wait_until


class FakeNats(MemoryBus):
    """The in-memory bus, recording what the publisher sends; ``is_connected`` toggles outages."""

    def __init__(self) -> None:
        super().__init__(Subjects())
        self.sent: list[tuple[str, bytes]] = []
        self.decoder = event_decoder()
        self.subscribe_nowait(">", lambda s, d: self.sent.append((s, d)))

    @property
    def is_connected(self) -> bool:
        return self.connected

    @is_connected.setter
    def is_connected(self, value: bool) -> None:
        self.set_connected(value)

    def messages(self) -> list:
        return [self.decoder.decode(d) for _, d in self.sent]

    def events(self) -> list:
        out = []
        for m in self.messages():
            out.extend(m.events if isinstance(m, EventBatch) else [m])
        return out


def request(i: int) -> RequestInfo:
    return RequestInfo(f"r{i}", "m", "m", prompt_tokens=100, prefix_hashes=list(range(12)))


@contextlib.asynccontextmanager
async def running(pub: PeerPublisher):
    task = asyncio.create_task(pub.run())
    try:
        yield pub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def settings(**kw) -> SharingSettings:
    kw.setdefault("replica", "a")
    kw.setdefault("heartbeat_interval_s", 60.0)
    kw.setdefault("max_event_age_s", 1e12)  # the tests use small fixed timestamps
    return SharingSettings(**kw)


async def test_a_burst_goes_out_in_full_batches_on_the_replicas_subject():
    nc = FakeNats()
    pub = PeerPublisher(nc, "ns", "pool", settings(max_batch=128, flush_interval_s=0.005))
    async with running(pub):
        await wait_until(lambda: len(nc.sent) >= 1, what="heartbeat at start")
        nc.sent.clear()
        for i in range(300):
            pub.on_local_assignment(request(i), "10.0.0.1:8000", 1000.0 + i)
        await wait_until(lambda: len(nc.events()) == 300, what="all events published")
    assert {s for s, _ in nc.sent} == {Subjects().events("ns", "pool", "a")}
    assert sorted(len(m.events) for m in nc.messages()) == [44, 128, 128]
    assert [e.request_id for e in nc.events()] == [f"r{i}" for i in range(300)]
    first = nc.events()[0]
    assert isinstance(first, Assignment) and first.prefix_hashes == list(range(12))
    # compact: the batch names the replica, the subject names namespace and pool
    assert (first.replica, first.namespace, first.pool) == ("", "", "")
    assert {m.replica for m in nc.messages()} == {"a"}


async def test_a_lone_event_is_published_after_the_linger():
    nc = FakeNats()
    pub = PeerPublisher(nc, "ns", "pool", settings(flush_interval_s=0.005))
    async with running(pub):
        await wait_until(lambda: len(nc.sent) >= 1)
        pub.on_local_assignment(request(1), "10.0.0.1:8000", 1000.0)
        pub.on_local_completion(request(1), "10.0.0.1:8000", 200, 100, 20, 0.5, 0.1, 1000.5)
        await wait_until(lambda: len(nc.events()) == 2, what="the two events published")
    a, c = nc.events()
    assert isinstance(c, Completion) and c.model == "m" and c.output_tokens == 20
    assert a.ts == 1000.0 and c.ts == 1000.5


async def test_without_batching_each_event_is_its_own_message():
    nc = FakeNats()
    pub = PeerPublisher(nc, "ns", "pool", settings(max_batch=1, flush_interval_s=0.0))
    async with running(pub):
        await wait_until(lambda: len(nc.sent) >= 1)
        nc.sent.clear()
        for i in range(10):
            pub.on_local_assignment(request(i), "10.0.0.1:8000", 1000.0)
        await wait_until(lambda: len(nc.sent) == 10)
    assert all(isinstance(m, Assignment) for m in nc.messages())
    assert {(m.replica, m.namespace, m.pool) for m in nc.messages()} == {("a", "ns", "pool")}


async def test_while_disconnected_the_oldest_events_are_dropped_and_counted():
    nc = FakeNats()
    nc.is_connected = False
    pub = PeerPublisher(nc, "ns", "pool", settings(buffer_events=4), offline_poll_s=0.01)
    async with running(pub):
        for i in range(10):
            pub.on_local_assignment(request(i), "10.0.0.1:8000", 1000.0 + i)
        await asyncio.sleep(0.05)
        assert nc.sent == [] and pub.buffered == 4 and pub.dropped == 6
        nc.is_connected = True
        await wait_until(lambda: len(nc.events()) == 4, what="the buffered events published")
    assert [e.request_id for e in nc.events()] == ["r6", "r7", "r8", "r9"]
    assert (
        pub.metrics.registry.get_sample_value(
            "infergate_sharing_dropped_events_total", {"reason": "buffer_full"}
        )
        == 6
    )


async def test_events_too_old_for_the_stream_are_not_published():
    nc = FakeNats()
    nc.is_connected = False
    pub = PeerPublisher(
        nc,
        "ns",
        "pool",
        settings(max_event_age_s=30.0),
        clock=lambda: 1100.0,
        offline_poll_s=0.01,
    )
    async with running(pub):
        pub.on_local_assignment(request(1), "10.0.0.1:8000", 1000.0)  # 100 s old
        pub.on_local_assignment(request(2), "10.0.0.1:8000", 1099.0)
        nc.is_connected = True
        await wait_until(lambda: len(nc.events()) == 1)
    assert nc.events()[0].request_id == "r2"
    assert pub.dropped == 1


async def test_an_idle_replica_sends_heartbeats():
    nc = FakeNats()
    pub = PeerPublisher(nc, "ns", "pool", settings(heartbeat_interval_s=0.05))
    async with running(pub):
        await wait_until(lambda: len(nc.sent) >= 3, what="three heartbeats")
    assert all(isinstance(m, EventBatch) and m.events == [] and m.replica == "a" for m in nc.messages())


async def test_publish_failures_are_counted_never_raised_to_the_request_path():
    class Broken(FakeNats):
        async def publish(self, subject: str, data: bytes) -> None:
            raise BusError("gone")

    nc = Broken()
    pub = PeerPublisher(nc, "ns", "pool", settings())
    pub.on_local_assignment(request(1), "10.0.0.1:8000", 1000.0)  # only buffers: nothing to fail
    async with running(pub):
        await wait_until(lambda: pub.dropped >= 1, what="publish failure counted")
    assert (
        pub.metrics.registry.get_sample_value(
            "infergate_sharing_dropped_events_total", {"reason": "publish_error"}
        )
        == pub.dropped
    )


def test_the_completion_carries_the_request_so_nothing_is_remembered_per_request():
    pub = EventBatcher(Subjects(), "ns", "pool", settings(max_batch=1), clock=lambda: 1000.0)
    req = RequestInfo("r1", "client-model", "target-model", prompt_tokens=10)
    pub.on_local_completion(req, "10.0.0.1:8000", 200, 10, 5, 0.5, 0.1, 1000.0)
    ((done, n),) = pub.take()
    assert n == 1 and (done.model, done.target_model, done.request_id) == (
        "client-model",
        "target-model",
        "r1",
    )
    assert not [k for k, v in vars(pub).items() if isinstance(v, dict) and v]


def test_due_follows_the_linger_the_batch_size_and_the_heartbeat():
    clock = [1000.0]
    pub = EventBatcher(
        Subjects(),
        "ns",
        "pool",
        settings(max_batch=3, flush_interval_s=0.005, heartbeat_interval_s=1.0),
        clock=lambda: clock[0],
    )
    assert [m.events for m, _ in pub.take()] == [[]]  # nothing ever sent: a heartbeat at once
    pub.sent(EventBatch(replica="a"), 10, 0)
    assert pub.due() == 1001.0
    clock[0] = 1000.2
    pub.on_local_assignment(request(1), "x:1", 1000.2)
    assert pub.due() == pytest.approx(1000.205)  # the linger
    pub.on_local_assignment(request(2), "x:1", 1000.2)
    pub.on_local_assignment(request(3), "x:1", 1000.2)
    assert pub.due() == 1000.2  # a full batch: now
    assert [n for _, n in pub.take()] == [3]


@pytest.mark.parametrize("max_batch", [128, 1])
async def test_one_unencodable_event_is_dropped_and_counted_never_the_batch(max_batch):
    """Issue #19 finding 1: a 10^30 in one event crashed the publisher and lost its whole batch."""
    nc = FakeNats()
    pub = PeerPublisher(nc, "ns", "pool", settings(max_batch=max_batch, flush_interval_s=0.05))
    async with running(pub) as p:
        await wait_until(lambda: len(nc.sent) >= 1, what="heartbeat at start")
        nc.sent.clear()
        for i in range(9):
            info = request(i)
            if i == 4:
                info.expected_output_tokens = 10**30
            p.on_local_assignment(info, "10.0.0.1:8000", 1000.0 + i)
        p.on_local_completion(request(9), "10.0.0.1:8000", 200, 10, -(2**70), 0.1, 0.01, 1010.0)
        p.on_local_completion(request(0), "10.0.0.1:8000", 200, 10, 5, 0.1, 0.01, 1010.0)
        await wait_until(lambda: len(nc.events()) == 9, what="the other events published")
        for i in range(10, 12):  # the task survived: later events still go out
            p.on_local_assignment(request(i), "10.0.0.1:8000", 1020.0 + i)
        await wait_until(lambda: len(nc.events()) == 11, what="later events published")
    ids = [e.request_id for e in nc.events()]
    assert ids == ["r0", "r1", "r2", "r3", "r5", "r6", "r7", "r8", "r0", "r10", "r11"]
    assert pub.metrics.dropped_events.labels("encode_error")._value.get() == 2
    assert pub.dropped == 2
