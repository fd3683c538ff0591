"""The split: pool state (one owner of the pool's data), admission (503/429), selection, and their order."""

from __future__ import annotations

import random

from sched_helpers import NOW, req, snap

from picker.director import Director, RequestHeaders, Routed
from picker.metrics import PickerMetrics
from picker.models import ModelTable
from picker.scheduling import PoolState, Rejection, SheddingAdmission, build_profile
from picker.view import PoolView
from shared.schemas import Tombstone
from tests.support.snapshots import snapshot


def profile(name: str = "default", seed: int = 1):
    return build_profile(name, rng=random.Random(seed))


def fed(p, *specs: dict):
    for i, spec in enumerate(specs):
        p.state.on_snapshot(snap(i, **spec), NOW)
    p.state.advance(NOW)
    return p


# -- admission ------------------------------------------------------------------------------


def test_admission_answers_503_without_candidates_and_429_only_for_the_shed_list():
    p = fed(profile(), {"waiting": 9}, {"kv_usage": 0.95})
    assert p.admission.admit(req(criticality="Sheddable"), p.state) == Rejection(
        429, "pool saturated: Sheddable request shed", "default"
    )
    assert p.admission.admit(req(criticality="Standard"), p.state) is None
    assert p.admission.admit(req(criticality="Critical"), p.state) is None
    none = p.admission.admit(req(candidates=frozenset({"10.9.9.9:8000"})), p.state)
    assert none is not None and none.status == 503
    assert "candidate restriction" in none.reason
    empty = profile()
    empty.state.advance(NOW)
    assert empty.admission.admit(req(), empty.state) == Rejection(503, "no endpoints in the pool", "default")


def test_shedding_is_admissions_job_not_the_schedulers():
    p = fed(profile("gie-v1"), {"waiting": 9}, {"waiting": 7})
    r = req(criticality="Sheddable")
    assert p.decide(r, NOW).status == 429
    d = p.scheduler.schedule(r, p.state)  # selection alone does not shed
    assert d.ok and len(d.endpoints) == 2


def test_an_admission_without_a_shed_list_never_sheds():
    p = fed(profile("gie-v1"), {"waiting": 9})
    p.admission = SheddingAdmission(frozenset())
    assert p.decide(req(criticality="Sheddable"), NOW).ok


# -- the pool state -------------------------------------------------------------------------


def test_candidates_are_computed_once_per_request_and_again_after_a_change():
    p = fed(profile(), {}, {})
    r = req()
    first = p.state.candidates(r)
    assert p.state.candidates(r) is first  # admission and selection share one gather
    assert p.state.candidates(req()) is not first  # another request
    p.state.on_snapshot(snap(1, ready=False), NOW)
    again = p.state.candidates(r)
    assert again is not first and [s.address for s in again.fresh] == [snap(0).address]
    p.state.advance(NOW + 5.0)  # later: the same snapshots are stale now
    late = p.state.candidates(r)
    assert not late.fresh and [s.address for s in late.stale] == [snap(0).address]


def test_requests_are_keyed_by_replica_and_request_id():
    state = PoolState()
    x, y = snap(0).address, snap(1).address
    state.on_snapshot(snap(0, ts=NOW - 1), NOW)
    state.on_snapshot(snap(1, ts=NOW - 1), NOW)
    state.on_assigned(req("same"), x, NOW, replica="me")
    state.on_assigned(req("same"), y, NOW, replica="peer")
    assert len(state.inflight) == 2
    state.on_completed("same", NOW, replica="peer")
    assert state.inflight.extra(x) != (0, 0) and state.inflight.extra(y) == (0, 0)
    state.on_completed("same", NOW, replica="nobody")  # unknown key: nothing happens
    assert len(state.inflight) == 1
    state.on_completed("same", NOW, replica="me")
    assert len(state.inflight) == 0


def test_the_view_feeds_the_state_and_owns_only_the_ordering_rules():
    state = PoolState()
    view = PoolView("default", "pool", state)
    assert view.apply(snapshot("10.0.0.1:8000", pool="pool", seq=1, ts=NOW), now=NOW)
    assert view.endpoints is state.endpoints and list(state.endpoints) == ["10.0.0.1:8000"]
    assert state.endpoint_state("10.0.0.1:8000") is not None
    assert not view.apply(snapshot("10.0.0.1:8000", pool="pool", seq=1, ts=NOW), now=NOW)  # not newer
    tomb = Tombstone(namespace="default", pool="pool", pod="p", address="10.0.0.1:8000", seq=2, ts=NOW + 1)
    assert view.apply(tomb, now=NOW + 1)
    assert not state.endpoints and state.endpoint_state("10.0.0.1:8000") is None and len(state) == 0


# -- the director's order -------------------------------------------------------------------


class Steps:
    """Records the order of the director's calls into admission, scheduler and state."""

    def __init__(self, p, reject: Rejection | None = None) -> None:
        self.calls: list[str] = []
        admit, schedule, assigned = p.admission.admit, p.scheduler.schedule, p.state.on_assigned
        advance = p.state.advance

        def spy_advance(now):
            self.calls.append("advance")
            advance(now)

        def spy_admit(request, state):
            self.calls.append("admit")
            return reject if reject is not None else admit(request, state)

        def spy_schedule(request, state):
            self.calls.append("schedule")
            return schedule(request, state)

        def spy_assigned(request, address, now, *, replica=""):
            self.calls.append(f"account:{replica}")
            assigned(request, address, now, replica=replica)

        p.state.advance, p.admission.admit = spy_advance, spy_admit
        p.scheduler.schedule, p.state.on_assigned = spy_schedule, spy_assigned


def director_of(p) -> Director:
    view = PoolView("default", "pool", p.state)
    view.apply(snapshot("10.0.0.1:8000", pool="pool"))
    return Director(
        view=view,
        admission=p.admission,
        scheduler=p.scheduler,
        models=ModelTable([], "pool", "route"),
        metrics=PickerMetrics(),
        replica="me",
    )


BODY = b'{"model": "m", "prompt": "hello"}'


def test_the_director_admits_then_schedules_then_accounts():
    p = profile()
    steps = Steps(p)
    out = director_of(p).route(RequestHeaders(path="/v1/completions", request_id="r"), BODY, None)
    assert isinstance(out, Routed)
    assert steps.calls == ["advance", "admit", "schedule", "account:me"]
    assert len(p.state.inflight) == 1


def test_a_rejected_request_never_reaches_the_scheduler_nor_the_accounting():
    p = profile()
    steps = Steps(p, reject=Rejection(429, "shed for the test"))
    out = director_of(p).route(RequestHeaders(path="/v1/completions", request_id="r"), BODY, None)
    assert not isinstance(out, Routed) and out.status == 429 and out.reason == "shed for the test"
    assert steps.calls == ["advance", "admit"]
    assert len(p.state.inflight) == 0
