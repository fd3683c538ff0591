"""The bus rulebook: ordering and deduplication rules, and both services applying them identically."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from autoscaler.service import Autoscaler, AutoscalerConfig
from picker.scheduling import PoolState, RequestInfo
from picker.sharing import PeerListener, SharingSettings
from picker.view import PoolView
from shared.bus import MemoryBus
from shared.feed import EventFeed, EventLedger, SnapshotOrder
from shared.schemas import Assignment, Completion, EndpointSnapshot, EventBatch, Tombstone, encode
from shared.subjects import Subjects

NS, POOL = "ns", "pool"
T0 = 1_800_000_000.0
SUBJECTS = Subjects("t")


def snap(address: str, *, seq: int, ts: float, epoch: str = "e1", waiting: int = 0) -> EndpointSnapshot:
    return EndpointSnapshot(
        namespace=NS, pool=POOL, pod=f"pod-{address}", address=address, model="llama",
        waiting=waiting, ts=ts, seq=seq, epoch=epoch,
    )  # fmt: skip


def gone(address: str, *, seq: int, ts: float, epoch: str = "e1") -> Tombstone:
    return Tombstone(
        namespace=NS, pool=POOL, pod=f"pod-{address}", address=address, seq=seq, ts=ts, epoch=epoch
    )


# -- the rules ------------------------------------------------------------------------------


def test_snapshot_order_same_epoch_by_seq_other_epoch_strictly_newer_ts():
    o = SnapshotOrder()
    assert o.admit(snap("a", seq=5, ts=T0), T0)
    assert not o.admit(snap("a", seq=5, ts=T0 + 9), T0)  # replayed
    assert not o.admit(snap("a", seq=4, ts=T0 + 9), T0)  # reordered
    assert not o.admit(snap("a", seq=1, ts=T0, epoch="e2"), T0)  # another incarnation, not newer
    assert o.admit(snap("a", seq=1, ts=T0 + 0.001, epoch="e2"), T0)  # newer: a restarted collector
    assert not o.admit(snap("a", seq=9, ts=T0, epoch="e1"), T0)  # a late one of the old incarnation


def test_tombstones_obey_the_order_and_block_older_snapshots_until_forgotten():
    o = SnapshotOrder()
    assert o.admit(snap("a", seq=2, ts=T0), T0)
    assert not o.admit(gone("a", seq=1, ts=T0 - 1), T0)  # a stale tombstone cannot remove it
    assert o.admit(gone("a", seq=3, ts=T0 + 1), T0)
    assert not o.admit(snap("a", seq=2, ts=T0, epoch="old"), T0)  # cannot resurrect
    assert o.tombstoned == 1
    assert o.forget_tombstones(T0 + 1) == 1 and o.tombstoned == 0
    assert o.admit(snap("a", seq=1, ts=T0, epoch="old"), T0 + 1)  # forgotten: starts afresh


def test_the_ledger_keys_requests_by_replica_and_id():
    led = EventLedger(ttl=60)
    assert led.assign("a", "r1", T0) and led.assign("b", "r1", T0)  # two replicas, two requests
    assert not led.assign("a", "r1", T0)  # duplicate
    assert led.complete("a", "r1", T0 + 1) and not led.complete("a", "r1", T0 + 1)
    assert led.open_requests("a") == 0 and led.open_requests("b") == 1
    assert not led.assign("a", "r1", T0 + 0.5)  # older than its completion: a replay
    assert led.assign("a", "r1", T0 + 2)  # later: the client reused the id for a new request
    assert led.complete("a", "r9", T0) and not led.assign("a", "r9", T0 - 1)  # completion first
    led.expire(T0 + 62.1)
    assert len(led) == 0


# -- one sequence, both services ---------------------------------------------------------------


def endpoint_messages(rng: random.Random) -> list:
    """Snapshots of four endpoints with a collector restart, a removal and a comeback."""
    out: list = []
    t = T0
    for i, addr in enumerate(f"10.0.0.{k}:8000" for k in range(1, 5)):
        seq = 0
        for _ in range(rng.randint(3, 6)):
            seq += 1
            t += rng.uniform(0.01, 0.2)
            out.append(snap(addr, seq=seq, ts=t, waiting=rng.randint(0, 9)))
        if i == 1:  # removed for good
            out.append(gone(addr, seq=seq + 1, ts=t + 0.05))
        if i == 2:  # the collector restarted: a new epoch counts from 1
            for s in range(1, 3):
                t += 0.1
                out.append(snap(addr, seq=s, ts=t, epoch="e2", waiting=s))
        if i == 3:  # removed, then back
            out.append(gone(addr, seq=seq + 1, ts=t + 0.05))
            out.append(snap(addr, seq=seq + 2, ts=t + 0.1, waiting=7))
    return out


def _fields(ev) -> dict:
    return {f: getattr(ev, f) for f in ev.__struct_fields__}


def event_messages(rng: random.Random) -> list:
    """Three replicas' batches: open and finished requests, reused ids, bare events."""
    out: list = []
    for name in ("pa", "pb", "pc"):
        events: list = []
        t = T0
        for i in range(rng.randint(15, 30)):
            t += rng.uniform(0.001, 0.05)
            rid = f"{name}-{i}"
            addr = f"10.0.0.{rng.randint(1, 4)}:8000"
            target = rng.choice(["llama", "sql-lora"])
            a = Assignment(request_id=rid, replica="", address=addr, model="chat", target_model=target, ts=t)
            events.append(a)
            if rng.random() < 0.7:
                done = Completion(request_id=rid, replica="", address=addr, target_model=target, ts=t + 0.01)
                events.append(done)
                if rng.random() < 0.3:  # the client reuses the id for a new request, later
                    events.append(a.__class__(**{**_fields(a), "ts": t + 0.02}))
        i = 0
        while i < len(events):
            n = rng.randint(1, 6)
            chunk = events[i : i + n]
            if n == 1 and rng.random() < 0.5:  # batching off: a bare, self-describing event
                ev = chunk[0]
                out.append(type(ev)(**{**_fields(ev), "replica": name}))
            else:
                out.append(EventBatch(replica=name, events=chunk, ts=chunk[-1].ts))
            i += n
    return out


def deliveries(rng: random.Random, messages: list) -> list[bytes]:
    """Publish order with local reordering, duplicates, and a replay of everything at the end."""
    order = sorted(range(len(messages)), key=lambda k: k + rng.uniform(-4, 4))
    out = [messages[k] for k in order]
    out += [rng.choice(messages) for _ in range(len(messages) // 5)]  # redelivered
    out += messages  # a replay after a reconnect
    return out


class InFlight:
    """The accounting hooks, reduced to what they would count: open requests per endpoint and model."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], tuple[str, str]] = {}

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None:
        self.open[(replica, request.request_id)] = (address, request.target_model)

    def on_completed(self, request_id: str, now: float, *, replica: str = "") -> None:
        self.open.pop((replica, request_id), None)

    def set_peer_rank(self, index: int, count: int, unseen: float = 1.0) -> None:
        pass


@pytest.mark.parametrize("seed", range(6))
def test_the_picker_and_the_autoscaler_apply_the_same_sequence_identically(seed):
    rng = random.Random(seed)
    now = T0 + 30
    bus = MemoryBus(SUBJECTS, clock=lambda: now)
    # the picker: its pool view and its peer listener (an observer: every replica is a peer)
    hooks = InFlight()
    view = PoolView(NS, POOL, PoolState(), clock=lambda: now)
    listener = PeerListener(bus, NS, POOL, SharingSettings(replica="observer"), hooks, clock=lambda: now)
    bus.follow_last_values_nowait(SUBJECTS.endpoints_of_pool(NS, POOL), view.on_message)
    bus.subscribe_nowait(listener.subject, listener.feed.live)
    # the autoscaler: its own handlers behind the same feeds
    scaler = Autoscaler(AutoscalerConfig(pools=[f"{NS}/{POOL}"]))
    scaler.aggregator.clock = lambda: now
    bus.subscribe_nowait(SUBJECTS.endpoints_of_pool(NS, POOL), scaler._on_endpoint)
    bus.subscribe_nowait(listener.subject, EventFeed(bus, listener.subject, scaler._on_event).live)

    for msg in deliveries(rng, endpoint_messages(rng)):
        bus.publish_nowait(SUBJECTS.endpoint(NS, POOL, msg.pod, 8000), encode(msg))
    for msg in deliveries(rng, event_messages(rng)):
        bus.publish_nowait(SUBJECTS.events(NS, POOL, msg.replica), encode(msg))

    # per endpoint: the same endpoints, each with the same accepted message
    picker_eps = {a: (v.snapshot.epoch, v.snapshot.seq) for a, v in view.endpoints.items()}
    scaler_eps = {k[2]: (s.epoch, s.seq) for k, s in scaler.aggregator._endpoints.items()}
    assert picker_eps == scaler_eps
    assert "10.0.0.2:8000" not in picker_eps  # removed
    assert picker_eps["10.0.0.3:8000"][0] == "e2" and "10.0.0.4:8000" in picker_eps
    # per endpoint and model: the same requests in flight
    picker_load = Counter(hooks.open.values())
    scaler_load = Counter(
        {
            (addr, key.target_model): n
            for addr, per in scaler.aggregator._inflight_at.items()
            for key, n in per.items()
        }
    )
    assert picker_load == scaler_load
    assert sum(picker_load.values()) > 0
    assert listener.applier.duplicates > 0 and scaler.aggregator.counters["duplicates"] > 0
    assert listener.applier.applied == (
        scaler.aggregator.counters["assignments"] + scaler.aggregator.counters["completions"]
    )
