"""The idempotent rules that apply peers' events to a scheduler (no NATS needed)."""

from __future__ import annotations

import random

import pytest

from picker.scheduling import RequestInfo, build_profile
from picker.sharing import EventApplier, to_request_info
from shared.schemas import Assignment, Completion, EventBatch


class Recorder:
    """Records the hook calls, to check exactly what reaches the pool state."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None:
        self.calls.append(("assigned", request.request_id, address, now, replica))

    def on_completed(self, request_id: str, now: float, *, replica: str = "") -> None:
        self.calls.append(("completed", request_id, now, replica))


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def assign(rid: str, ts: float, address: str = "10.0.0.1:8000", replica: str = "a", **kw) -> Assignment:
    return Assignment(
        request_id=rid, replica=replica, address=address, model="m", target_model="m", ts=ts, **kw
    )


def done(rid: str, ts: float, replica: str = "a") -> Completion:
    return Completion(request_id=rid, replica=replica, address="10.0.0.1:8000", ts=ts)


def test_the_same_assignment_twice_is_applied_once():
    rec, clock = Recorder(), Clock()
    ap = EventApplier(rec, clock=clock)
    assert ap.apply_event(assign("r1", 999.0)) == 1
    assert ap.apply_event(assign("r1", 999.0), source="replay") == 0
    assert [c[0] for c in rec.calls] == ["assigned"]
    assert ap.duplicates == 1


def test_an_assignment_replayed_after_its_completion_does_not_reopen_it():
    rec, clock = Recorder(), Clock()
    ap = EventApplier(rec, clock=clock)
    ap.apply_event(assign("r1", 999.0))
    ap.apply_event(done("r1", 999.5))
    ap.apply_batch(EventBatch(replica="a", events=[assign("r1", 999.0), done("r1", 999.5)]), source="replay")
    assert [c[0] for c in rec.calls] == ["assigned", "completed"]
    assert ap.open_requests("a") == 0


def test_a_completion_that_overtakes_its_assignment_wins():
    rec, clock = Recorder(), Clock()
    ap = EventApplier(rec, clock=clock)
    ap.apply_event(done("r1", 999.5))  # live, while the replay has not reached the assignment
    ap.apply_event(assign("r1", 999.0), source="replay")
    assert [c[0] for c in rec.calls] == ["completed"]
    assert ap.open_requests("a") == 0


def test_a_reused_request_id_with_a_later_time_is_a_new_request():
    rec, clock = Recorder(), Clock()
    ap = EventApplier(rec, clock=clock)
    ap.apply_event(assign("r1", 990.0))
    ap.apply_event(done("r1", 991.0))
    assert ap.apply_event(assign("r1", 995.0)) == 1
    assert ap.open_requests("a") == 1


def test_event_time_is_passed_to_the_scheduler_and_clamped_to_now():
    rec, clock = Recorder(), Clock(1000.0)
    ap = EventApplier(rec, clock=clock)
    ap.apply_event(assign("old", 998.0))
    ap.apply_event(assign("future", 1005.0))  # a peer whose clock runs ahead
    ap.apply_event(assign("unknown", 0.0))
    assert [c[3] for c in rec.calls] == [998.0, 1000.0, 1000.0]
    assert rec.calls[0][4] == "a"


def test_memory_is_bounded_by_the_ttl():
    rec, clock = Recorder(), Clock(1000.0)
    ap = EventApplier(rec, ttl=10.0, clock=clock)
    for i in range(100):
        ap.apply_event(assign(f"r{i}", 1000.0))
    ap.apply_event(done("r0", 1000.0))
    assert len(ap) == 100
    clock.t = 1011.0
    ap.expire(clock.t)
    assert len(ap) == 0
    assert ap.open_requests("a") == 0


def test_forgetting_a_silent_replica_releases_only_its_open_requests():
    rec, clock = Recorder(), Clock(1000.0)
    ap = EventApplier(rec, clock=clock)
    ap.apply_event(assign("a1", 999.0, replica="a"))
    ap.apply_event(assign("a2", 999.0, replica="a"))
    ap.apply_event(done("a2", 999.2, replica="a"))
    ap.apply_event(assign("b1", 999.0, replica="b"))
    assert ap.forget_replica("a") == 1
    assert rec.calls[-1][:2] == ("completed", "a1")
    assert ap.open_requests("b") == 1
    # its late completion is then a duplicate, not a second release
    assert ap.apply_event(done("a1", 999.9, replica="a")) == 0


def test_wire_assignment_converts_to_request_info():
    a = assign(
        "r1",
        999.0,
        criticality="Critical",
        prompt_tokens=300,
        expected_output_tokens=50,
        prefix_hashes=[1, 2, 3],
    )
    info = to_request_info(a)
    assert (info.request_id, info.criticality, info.prompt_tokens, info.expected_output_tokens) == (
        "r1",
        "Critical",
        300,
        50,
    )
    assert info.prefix_hashes == [1, 2, 3]
    assert to_request_info(assign("r2", 1.0, criticality="bogus")).criticality == "Standard"


def test_real_state_counts_a_duplicated_peer_request_once():
    sched = build_profile("default", rng=random.Random(1)).state
    clock = Clock(1000.0)
    ap = EventApplier(sched, clock=clock)
    addr = "10.0.0.1:8000"
    batch = EventBatch(replica="a", events=[assign("r1", 999.0, address=addr, prompt_tokens=100)])
    ap.apply_batch(batch)
    ap.apply_batch(batch, source="replay")
    assert sched.inflight.extra(addr)[0] == 1
    ap.apply_event(done("r1", 999.5))
    ap.apply_batch(batch, source="replay")
    assert sched.inflight.extra(addr)[0] == 0
    assert len(sched.inflight) == 0


def test_two_replicas_requests_with_one_client_id_stay_two_requests_in_the_state():
    state = build_profile("default", rng=random.Random(1)).state
    clock = Clock(1000.0)
    ap = EventApplier(state, clock=clock)
    x, y = "10.0.0.1:8000", "10.0.0.2:8000"
    ap.apply_event(assign("same", 999.0, address=x, replica="a"))
    ap.apply_event(assign("same", 999.1, address=y, replica="b"))
    assert len(state.inflight) == 2
    assert (state.inflight.extra(x)[0], state.inflight.extra(y)[0]) == (1, 1)
    ap.apply_event(done("same", 999.5, replica="b"))  # b's request ended; a's is still running
    assert len(state.inflight) == 1
    assert (state.inflight.extra(x)[0], state.inflight.extra(y)[0]) == (1, 0)
    assert ap.forget_replica("a") == 1  # a went silent: its request is released, by its key
    assert len(state.inflight) == 0 and state.inflight.extra(x)[0] == 0


def test_events_of_a_compact_batch_take_the_batchs_replica():
    rec, clock = Recorder(), Clock()
    ap = EventApplier(rec, clock=clock)
    ap.apply_batch(EventBatch(replica="b", events=[assign("r1", 999.0, replica="")], ts=999.0))
    assert rec.calls[0][4] == "b" and ap.open_requests("b") == 1
    assert ap.forget_replica("b") == 1


def test_unseen_estimate_is_peer_rate_times_delay():
    from picker.sharing.listener import UnseenEstimate

    est = UnseenEstimate(tau=1.0)
    assert est.update(0, 0.005, 100.0) == 0.0  # nothing to go on yet
    # 200 peer assignments per second, applied 5 ms after they were made: one in flight.
    t, count = 100.0, 0
    for _ in range(50):
        t += 0.1
        count += 20
        unseen = est.update(count, 0.005, t)
    assert unseen == pytest.approx(1.0, rel=0.01)
    for _ in range(50):  # the peers go quiet
        t += 0.1
        unseen = est.update(count, 0.005, t)
    assert unseen < 0.01
    assert est.update(count, 0.005, t) == unseen  # no time passed: no change


def test_a_scheduler_failing_to_take_its_rank_does_not_stop_the_liveness_watch(caplog):
    from picker.sharing import SharingSettings
    from picker.sharing.listener import PeerListener
    from shared.bus import MemoryBus
    from shared.subjects import Subjects

    class Broken(Recorder):
        def set_peer_rank(self, index, count, unseen=1.0):
            raise RuntimeError("boom")

    clock = Clock()
    hooks = Broken()
    listener = PeerListener(
        MemoryBus(Subjects("t")),
        "ns",
        "pool",
        SharingSettings(replica="b", peer_timeout_s=0),
        hooks,
        clock=clock,
    )
    listener.applier.apply_event(assign("r1", clock.t, address="x:1"))
    listener.check_peers(clock.t)  # logs once, raises nothing
    listener.check_peers(clock.t + 0.1)
    assert listener.metrics.peers_alive._value.get() == 1
    assert sum("setting the peer rank failed" in r.message for r in caplog.records) == 1
    assert hooks.calls[0][:3] == ("assigned", "r1", "x:1")  # the event itself was applied


def test_a_nonsense_unseen_estimate_means_a_full_margin():
    s = build_profile("default", rng=random.Random(1)).state
    s.set_peer_rank(1, 2, float("nan"))
    assert s.peer_unseen == 1.0
    s.set_peer_rank(1, 2, -3.0)
    assert s.peer_unseen == 1.0
