"""Two picker replicas in one process sharing their traffic over a real nats-server.

Each replica has its own NATS connection, its own scheduler (the real one, from
``build_profile``) and its own :class:`PeerSharing`; only NATS connects them.
"""

from __future__ import annotations

import random

import msgspec
import pytest
from sched_helpers import build

from picker.scheduling import EndpointView, RequestInfo
from picker.sharing import PeerSharing, SharingSettings
from shared.natsbus import NatsBus
from shared.natsconn import NatsOptions
from shared.schemas import Assignment, EndpointSnapshot, EventBatch, encode, now
from shared.service import Supervisor
from shared.subjects import Subjects
from tests.support.waiting import wait_until

NS, POOL = "ns", "pool"
X, Y = "10.0.0.1:8000", "10.0.0.2:8000"
SUBJECTS = Subjects("t")


def snapshot(address: str, kv: float, ts: float) -> EndpointSnapshot:
    return EndpointSnapshot(
        namespace=NS,
        pool=POOL,
        pod=address,
        address=address,
        model="llama",
        kv_usage=kv,
        kv_capacity_tokens=16_000,
        block_size=16,
        ts=ts,
    )


def views(ts: float) -> list[EndpointView]:
    # X is slightly less loaded than Y: alone, a replica sends the next request to X.
    return [EndpointView(X, snapshot(X, 0.10, ts), ts), EndpointView(Y, snapshot(Y, 0.12, ts), ts)]


def request(rid: str, *, prompt_tokens: int = 500, output: int = 1500, hashes: list[int] | None = None):
    return RequestInfo(
        rid,
        "llama",
        "llama",
        prompt_tokens=prompt_tokens,
        expected_output_tokens=output,
        prefix_hashes=hashes if hashes is not None else [hash((rid, i)) & (2**62) for i in range(12)],
    )


class Replica:
    """A picker replica minus Envoy: scheduler + sharing, driven the way the ext_proc path drives them."""

    def __init__(self, url: str, name: str, manage_streams: bool = True, **settings) -> None:
        self.manage_streams = manage_streams
        self.url = url
        self.name = name
        settings.setdefault("heartbeat_interval_s", 0.1)
        settings.setdefault("peer_timeout_s", 0.0)
        self.settings = SharingSettings(replica=name, **settings)
        self.scheduler = build("default", rng=random.Random(7))
        self.nc = None
        self.sharing: PeerSharing | None = None
        self.supervisor = Supervisor(name)

    async def start(self, wait_ready: bool = True) -> Replica:
        self.bus = await NatsBus.connect(
            NatsOptions(servers=[self.url], name=self.name, subject_prefix="t", reconnect_wait=0.1)
        )
        self.nc = self.bus.nc  # the raw client, to publish by hand and to kill the connection
        self.sharing = PeerSharing(
            self.bus, NS, POOL, self.settings, self.scheduler.state, manage_streams=self.manage_streams
        )
        self.sharing.start(self.supervisor)
        if wait_ready:
            await wait_until(self.sharing.is_ready, what=f"{self.name} ready")
        return self

    @property
    def applier(self):
        return self.sharing.listener.applier

    def metric(self, name: str, labels: dict | None = None) -> float:
        return self.sharing.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    def route(self, req: RequestInfo, address: str) -> str:
        """Account and publish a request sent to ``address``, as the ext_proc path does."""
        t = now()
        self.scheduler.on_assigned(req, address, t, replica=self.name)
        self.sharing.sink.on_local_assignment(req, address, t)
        return address

    def finish(self, rid: str, address: str) -> None:
        t = now()
        self.scheduler.on_completed(rid, t, replica=self.name)
        self.sharing.sink.on_local_completion(request(rid), address, 200, 500, 100, 1.0, 0.1, t)

    async def stop(self) -> None:
        """Graceful: flush our last events, then leave."""
        await self.sharing.close()
        await self.supervisor.close()
        await self.nc.drain()

    async def kill(self) -> None:
        """Like a crashed pod: nothing more is published, buffered events are lost."""
        await self.supervisor.close()
        await self.nc.close()


@pytest.fixture
async def replicas(nats_server):
    started: list[Replica] = []

    async def make(name: str, **kw) -> Replica:
        r = Replica(nats_server.url, name, **kw)
        started.append(r)
        return r

    yield make
    for r in started:
        if r.nc is not None and not r.nc.is_closed:
            await r.kill()


async def test_an_assignment_by_one_replica_shifts_the_others_next_decision(replicas):
    a = await (await replicas("a")).start()
    b = await (await replicas("b")).start()
    alone = build("default", rng=random.Random(7))  # the same decision without sharing
    pool = views(now())  # the pods' last scrape, before any of this traffic
    probe = request("probe")
    assert alone.schedule(probe, pool, now()).endpoints[0] == X
    assert b.scheduler.schedule(probe, pool, now()).endpoints[0] == X

    for i in range(4):
        a.route(request(f"a{i}"), X)  # A sends its own traffic to X ...
    await wait_until(lambda: b.applier.applied == 4, what="B applied A's assignments")
    # ... so B, which now sees that load, sends its next request elsewhere, unlike a lone replica.
    assert b.scheduler.schedule(probe, pool, now()).endpoints[0] == Y
    assert alone.schedule(probe, pool, now()).endpoints[0] == X
    assert b.scheduler.inflight.extra(X)[0] == 4
    # B also learnt the prefixes A's requests left in X's cache.
    assert b.scheduler.prefix.matched(X, request("a0").prefix_hashes) == 12

    for i in range(4):
        a.finish(f"a{i}", X)
    await wait_until(lambda: b.scheduler.inflight.extra(X)[0] == 0, what="B released A's completed requests")
    assert len(b.scheduler.inflight) == 0
    # A never applied its own events a second time.
    assert a.applier.applied == 0 and a.scheduler.inflight.extra(X)[0] == 0


async def test_a_killed_replicas_in_flight_entries_are_released(replicas):
    a = await (await replicas("a")).start()
    b = await (await replicas("b", peer_timeout_s=0.5)).start()
    for i in range(3):
        a.route(request(f"a{i}"), X)
    await wait_until(lambda: b.scheduler.inflight.extra(X)[0] == 3, what="B saw A's requests")
    await a.kill()  # no completion will ever come
    await wait_until(lambda: b.scheduler.inflight.extra(X)[0] == 0, what="A's entries released")
    assert len(b.scheduler.inflight) == 0
    assert b.metric("infergate_sharing_peers_lost_total") == 1


async def test_replicas_learn_their_ranks_from_each_other_and_spread_near_ties(replicas):
    a = await (await replicas("a", peer_timeout_s=0.5)).start()
    b = await (await replicas("b", peer_timeout_s=0.5)).start()
    c = await (await replicas("c", peer_timeout_s=0.5)).start()

    def ranks():
        return [(r.scheduler.peer_index, r.scheduler.peer_count) for r in (a, b, c)]

    await wait_until(lambda: ranks() == [(0, 3), (1, 3), (2, 3)], what="ranks by name")
    assert c.metric("infergate_sharing_peer_rank") == 2 and c.metric("infergate_sharing_peers_alive") == 2
    # Quiet peers: nothing of theirs is unheard of, so no reason to spread.
    assert c.scheduler.peer_unseen == 0.0
    for i in range(200):  # a burst from a: c now expects some of a's choices to be on their way
        a.route(request(f"burst{i}"), X)
    await wait_until(lambda: c.scheduler.peer_unseen > 0.0, what="c's estimate of unseen peer choices")
    assert c.metric("infergate_sharing_peer_unseen") == pytest.approx(c.scheduler.peer_unseen)

    await b.kill()  # its heartbeats stop: after the peer timeout, a and c close ranks
    await wait_until(lambda: ranks()[0] == (0, 2) and ranks()[2] == (1, 2), what="ranks after b left")
    assert a.metric("infergate_sharing_peers_lost_total") == 1


async def test_without_heartbeats_the_schedulers_ttl_still_expires_a_dead_peers_entries(replicas):
    a = await (await replicas("a")).start()
    b = await (await replicas("b", peer_timeout_s=0.0)).start()
    a.route(request("a0"), X)
    await wait_until(lambda: len(b.scheduler.inflight) == 1, what="B saw A's request")
    await a.kill()
    ttl = b.scheduler.inflight.ttl
    b.scheduler.inflight.expire(now() + ttl + 1)
    assert len(b.scheduler.inflight) == 0 and b.scheduler.inflight.extra(X)[0] == 0


async def test_a_restarted_replica_rebuilds_its_state_from_the_stream_before_ready(replicas):
    a = await (await replicas("a")).start()
    b = await (await replicas("b")).start()
    for i in range(5):
        a.route(request(f"a{i}"), X)
    for i in range(3):
        a.finish(f"a{i}", X)
    b.route(request("b0"), Y)
    await wait_until(lambda: a.applier.applied == 1 and b.applier.applied == 8, what="traffic shared")
    await a.stop()

    a2 = await replicas("a")  # same name, fresh process state
    assert len(a2.scheduler.inflight) == 0
    await a2.start(wait_ready=False)
    await a2.sharing.ready.wait()
    # Rebuilt before ready: its own two open requests (completions replayed too) and B's one.
    assert a2.scheduler.inflight.extra(X)[0] == 2
    assert a2.scheduler.inflight.extra(Y)[0] == 1
    assert len(a2.scheduler.inflight) == 3
    assert a2.scheduler.prefix.matched(X, request("a4").prefix_hashes) == 12
    assert a2.sharing.listener.replayed > 0
    assert a2.metric("infergate_sharing_replays_total", {"reason": "start", "outcome": "ok"}) == 1
    # and from then on it follows live traffic
    b.finish("b0", Y)
    await wait_until(lambda: a2.scheduler.inflight.extra(Y)[0] == 0, what="live completion applied")


async def test_duplicate_delivery_is_applied_once(replicas, nats_server):
    b = await (await replicas("b")).start()
    nc = b.nc
    subject = SUBJECTS.events(NS, POOL, "a")
    t = now()
    assignment = Assignment(
        request_id="r1", replica="a", address=X, model="llama", target_model="llama", prompt_tokens=100, ts=t
    )
    batch = encode(EventBatch(replica="a", events=[assignment], ts=t))
    for _ in range(3):
        await nc.publish(subject, batch)
    await nc.publish(subject, encode(assignment))  # the same event, unbatched
    await wait_until(lambda: b.applier.duplicates == 3, what="duplicates seen")
    assert b.scheduler.inflight.extra(X)[0] == 1
    # a replay overlapping live traffic reads the four stored copies again: none counts
    await b.sharing.listener.feed.replay(t - 5, "reconnect")
    assert b.applier.duplicates == 3 + 4 and b.applier.applied == 1
    assert b.scheduler.inflight.extra(X)[0] == 1


async def test_garbage_on_the_event_subject_is_dropped_and_counted(replicas):
    a = await (await replicas("a")).start()
    b = await (await replicas("b")).start()
    subject = SUBJECTS.events(NS, POOL, "mallory")
    await a.nc.publish(subject, b"\xff\x00 not msgpack")
    await a.nc.publish(subject, msgspec.msgpack.encode({"kind": "assign", "request_id": 5}))
    await a.nc.publish(subject, encode(snapshot(X, 0.1, now())))  # valid, but not a picker event
    a.route(request("ok"), X)
    await wait_until(lambda: b.applier.applied == 1, what="the good event applied after the garbage")
    assert b.metric("infergate_sharing_decode_errors_total") == 3
    assert b.scheduler.inflight.extra(X)[0] == 1


async def test_nats_restart_mid_run_recovers(replicas, nats_server):
    a = await (await replicas("a", buffer_events=5)).start()
    b = await (await replicas("b")).start()
    a.route(request("before"), X)
    await wait_until(lambda: b.applier.applied == 1, what="shared before the outage")

    nats_server.stop()
    await wait_until(lambda: not a.nc.is_connected and not b.nc.is_connected, what="both disconnected")
    for i in range(8):  # routed during the outage: the buffer keeps the newest five
        a.route(request(f"out{i}"), X)
    nats_server.start()
    await wait_until(lambda: a.nc.is_connected and b.nc.is_connected, what="both reconnected")

    await wait_until(lambda: b.scheduler.inflight.extra(X)[0] == 6, what="buffered events reached B")
    assert a.sharing.publisher.dropped == 3
    # live traffic flows again, in both directions, and the stream was recreated for replays
    b.route(request("after"), Y)
    a.finish("before", X)
    await wait_until(lambda: a.scheduler.inflight.extra(Y)[0] == 1, what="B -> A after the restart")
    await wait_until(lambda: b.scheduler.inflight.extra(X)[0] == 5, what="A -> B after the restart")
    info = await b.nc.jetstream().stream_info(SUBJECTS.event_stream)
    assert info.state.messages > 0


async def test_without_jetstream_streams_replicas_become_ready_and_share_live(replicas):
    a = await (await replicas("a", manage_streams=False)).start()
    b = await (await replicas("b", manage_streams=False)).start()
    assert b.metric("infergate_sharing_replays_total", {"reason": "start", "outcome": "no_stream"}) == 1
    a.route(request("a0"), X)
    await wait_until(lambda: b.scheduler.inflight.extra(X)[0] == 1, what="live sharing without a stream")


CONFLICTS = "infergate_sharing_replica_name_conflicts_total"


async def test_two_live_replicas_claiming_one_name_are_reported_loudly(replicas, caplog):
    """Issue #19 finding 6: two pickers with the same name used to ignore each other silently."""
    a = await (await replicas("same")).start()
    b = await (await replicas("same")).start()
    other = await (await replicas("other")).start()
    a.route(request("a0"), X)
    await wait_until(
        lambda: a.metric(CONFLICTS) > 0 and b.metric(CONFLICTS) > 0, what="both see the conflict"
    )
    assert other.metric(CONFLICTS) == 0
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "replica name" in r.getMessage()]
    assert errors, "the conflict is logged as an error"


async def test_a_restarted_replica_reading_its_previous_life_is_no_conflict(replicas):
    a = await (await replicas("a")).start()
    a.route(request("a0"), X)
    await a.sharing.publisher.flush()
    await a.stop()
    a2 = await (await replicas("a")).start()
    a2.route(request("a1"), X)
    await a2.sharing.publisher.flush()
    sent = a2.sharing.publisher.published_batches
    await wait_until(lambda: a2.sharing.publisher.published_batches >= sent + 5, what="own heartbeats")
    assert a2.sharing.listener.replayed > 0
    assert a2.metric(CONFLICTS) == 0
