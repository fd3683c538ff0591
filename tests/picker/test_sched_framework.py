"""The shared flow: readiness, candidates, 503/429, stale-last, fallbacks, robustness, determinism."""

from __future__ import annotations

import logging

import msgspec
import pytest
from sched_helpers import NOW, req, sched, view, views

from picker.scheduling import CRITICALITIES, Decision
from picker.scheduling.scorers import QueueScorer

PROFILES = ["default", "default-spread", "gie-v0", "gie-v1", "random", "round-robin"]


@pytest.mark.parametrize("profile", PROFILES)
def test_empty_pool_is_503(profile):
    d = sched(profile).schedule(req(), [], NOW)
    assert d.status == 503 and d.endpoints == [] and not d.ok


@pytest.mark.parametrize("profile", PROFILES)
def test_not_ready_or_unhealthy_endpoints_are_never_chosen(profile):
    vs = views({"ready": False}, {"healthy": False}, {"waiting": 50, "kv_usage": 0.99})
    s = sched(profile)
    for k in range(20):
        d = s.schedule(req(f"r{k}", criticality="Critical"), vs, NOW)
        assert d.endpoints == [vs[2].address]
    assert s.schedule(req(), vs[:2], NOW).status == 503


@pytest.mark.parametrize("profile", PROFILES)
def test_candidate_restriction_by_ip_port_or_ip(profile):
    vs = views({}, {}, {})
    s = sched(profile)
    d = s.schedule(req(candidates=frozenset({vs[1].address})), vs, NOW)
    assert d.endpoints == [vs[1].address]
    d = s.schedule(req(candidates=frozenset({"10.0.0.2"})), vs, NOW)
    assert d.endpoints == [vs[2].address]
    d = s.schedule(req(candidates=frozenset({"10.9.9.9:8000"})), vs, NOW)
    assert d.status == 503 and d.endpoints == []
    assert s.schedule(req(candidates=frozenset()), vs, NOW).status == 503


@pytest.mark.parametrize("profile", ["default", "gie-v0", "gie-v1"])
def test_stale_and_missing_metrics_rank_last(profile):
    vs = views(
        {"ts": NOW - 5.0},  # stale but idle
        {"waiting": 4, "kv_usage": 0.7},  # fresh, loaded
        {"consecutive_failures": 3, "scrape_error": "timeout"},  # metrics missing
    )
    s = sched(profile)
    for k in range(10):
        d = s.schedule(req(f"r{k}", criticality="Critical"), vs, NOW)
        assert d.endpoints[0] == vs[1].address
        assert set(d.endpoints[1:]) == {vs[0].address, vs[2].address}


@pytest.mark.parametrize("profile", ["default", "gie-v1"])
def test_only_stale_endpoints_still_route_critical(profile):
    vs = views({"ts": NOW - 5.0}, {"ts": NOW - 9.0})
    d = sched(profile).schedule(req(criticality="Critical"), vs, NOW)
    assert d.ok and set(d.endpoints) == {vs[0].address, vs[1].address}


@pytest.mark.parametrize("profile", PROFILES)
def test_fallbacks_are_distinct_and_ordered(profile):
    vs = views(*({"waiting": i % 3, "kv_usage": 0.1 * (i % 4)} for i in range(8)))
    s = sched(profile)
    for k in range(30):
        d = s.schedule(req(f"r{k}", criticality="Critical"), vs, NOW)
        assert len(d.endpoints) == 3
        assert len(set(d.endpoints)) == 3
        assert set(d.endpoints) <= {v.address for v in vs}
    assert len(s.schedule(req(), vs[:2], NOW).endpoints) == 2


def test_max_score_fallbacks_follow_the_scores():
    vs = views({"waiting": 3}, {"waiting": 0}, {"waiting": 5}, {"waiting": 1})
    config = {"profiles": {"q": {"scorers": [{"type": "queue", "weight": 1}], "fallbacks": 3}}}
    d = sched("q", config=config).schedule(req(criticality="Critical"), vs, NOW)
    assert d.endpoints == [vs[1].address, vs[3].address, vs[0].address, vs[2].address]


def test_fallbacks_setting():
    config = {"profiles": {"one": {"fallbacks": 0}}}
    d = sched("one", config=config).schedule(req(), views({}, {}, {}), NOW)
    assert len(d.endpoints) == 1


def test_max_score_breaks_ties_at_random():
    vs = views({}, {}, {}, {})
    s = sched("gie-v1")
    firsts = {s.schedule(req(f"r{k}"), vs, NOW).endpoints[0] for k in range(60)}
    assert len(firsts) == 4


@pytest.mark.parametrize("profile", PROFILES)
def test_same_seed_same_decisions(profile):
    vs = views(*({"waiting": i % 2} for i in range(6)))
    a, b = sched(profile, seed=42), sched(profile, seed=42)
    for k in range(25):
        r = req(f"r{k}", prompt_tokens=100 + k, prefix_hashes=[k % 3, 100 + k])
        da, db = a.schedule(r, vs, NOW), b.schedule(r, vs, NOW)
        assert da == db
        a.on_assigned(r, da.endpoints[0], NOW)
        b.on_assigned(r, db.endpoints[0], NOW)


# -- saturation and shedding -------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [{"waiting": 6}, {"kv_usage": 0.81}, {"ts": NOW - 0.3}, {"consecutive_failures": 1}],
    ids=["queue", "kv", "stale", "missing"],
)
@pytest.mark.parametrize("profile", ["default", "gie-v0", "gie-v1"])
def test_pool_saturation_sheds_only_sheddable(profile, spec):
    vs = views(spec, spec)
    s = sched(profile)
    d = s.schedule(req(criticality="Sheddable"), vs, NOW)
    assert d.status == 429 and d.endpoints == []
    for crit in ("Critical", "Standard"):
        assert s.schedule(req(criticality=crit), vs, NOW).ok


@pytest.mark.parametrize("profile", ["default", "gie-v0", "gie-v1"])
def test_not_saturated_when_one_pod_has_room(profile):
    vs = views({"waiting": 6}, {"waiting": 5, "kv_usage": 0.8})
    d = sched(profile).schedule(req(criticality="Sheddable"), vs, NOW)
    assert d.ok and d.endpoints[0] == vs[1].address


def test_staleness_threshold_is_configurable():
    config = {"profiles": {"lax": {"saturation": {"staleness_ms": 2000}}}}
    vs = views({"ts": NOW - 1.0})
    assert sched("lax", config=config).schedule(req(criticality="Sheddable"), vs, NOW).ok
    assert sched("gie-v1").schedule(req(criticality="Sheddable"), vs, NOW).status == 429


def test_default_counts_inflight_in_saturation():
    vs = views({"waiting": 4}, {"waiting": 4})
    s = sched("default")
    for v in vs:
        s.on_snapshot(v.snapshot, NOW)
    assert s.schedule(req(criticality="Sheddable"), vs, NOW).ok
    for k in range(4):  # two more on each pod since the scrape: 6 > 5
        s.on_assigned(req(f"a{k}"), vs[k % 2].address, NOW + 0.01)
    assert s.schedule(req(criticality="Sheddable"), vs, NOW + 0.01).status == 429
    assert s.schedule(req(criticality="Critical"), vs, NOW + 0.01).ok


def test_default_sends_sheddable_only_to_unsaturated_pods():
    vs = views({"waiting": 0, "kv_usage": 0.85}, {"waiting": 5, "kv_usage": 0.5})
    s = sched("default")
    for k in range(10):
        d = s.schedule(req(f"r{k}", criticality="Sheddable"), vs, NOW)
        assert d.endpoints == [vs[1].address]


def test_trivial_profiles_never_shed():
    vs = views({"waiting": 50}, {"waiting": 50})
    for p in ("random", "round-robin"):
        assert sched(p).schedule(req(criticality="Sheddable"), vs, NOW).ok


def test_criticalities_are_the_contract_ones():
    assert CRITICALITIES == ("Critical", "Standard", "Sheddable")


# -- robustness --------------------------------------------------------------------------


def test_a_failing_scorer_is_skipped_and_logged(monkeypatch, caplog):
    def boom(self, ctx, group):
        raise RuntimeError("bug")

    monkeypatch.setattr(QueueScorer, "score", boom)
    vs = views({"kv_usage": 0.9}, {"kv_usage": 0.1})
    with caplog.at_level(logging.ERROR, logger="picker.scheduling"):
        d = sched("gie-v1").schedule(req(), vs, NOW)
    assert d.ok and d.endpoints[0] == vs[1].address  # the KV scorer still decides
    assert any("scheduler plugin failed" in r.message for r in caplog.records)


def test_an_internal_error_falls_back_to_a_ready_endpoint(monkeypatch, caplog):
    s = sched("default")

    def boom(*a, **kw):
        raise RuntimeError("bug")

    monkeypatch.setattr(s, "_gather", boom)
    vs = views({"ready": False}, {})
    with caplog.at_level(logging.ERROR, logger="picker.scheduling"):
        d = s.schedule(req(), vs, NOW)
    assert isinstance(d, Decision) and d.endpoints == [vs[1].address]
    assert s.schedule(req(candidates=frozenset()), vs, NOW).status == 503


def test_hooks_never_raise_on_garbage():
    s = sched("default")
    s.on_assigned(req(prefix_hashes=["not-an-int"]), "10.0.0.1:8000", NOW)  # type: ignore[list-item]
    s.on_completed("unknown", NOW)
    s.on_endpoint_removed("nowhere:1", NOW)
    s.on_snapshot(None, NOW)  # type: ignore[arg-type]


def test_a_snapshot_that_cannot_be_digested_leaves_the_last_good_state():
    """States are refreshed in place: a bad snapshot must not leave one half updated."""
    s = sched("default")
    good = view(0, waiting=3, kv_usage=0.5, lora={"running": ["a"], "max_lora": 2}).snapshot
    s.on_snapshot(good, NOW)
    st = s.state.endpoint_state(good.address)
    before = {k: getattr(st, k) for k in type(st).__slots__}
    bad = msgspec.structs.replace(good, waiting=9, kv_usage=0.9, lora=None)  # no .running: refresh raises
    s.on_snapshot(bad, NOW + 0.05)  # logged, never raised
    assert s.state.endpoint_state(good.address) is st
    assert {k: getattr(st, k) for k in type(st).__slots__} == before


def test_removed_endpoint_forgets_state_and_load():
    s = sched("default")
    v = view(0)
    s.on_snapshot(v.snapshot, NOW)
    s.on_assigned(req("r1", prompt_tokens=100, prefix_hashes=[1, 2]), v.address, NOW + 0.1)
    assert s.inflight.extra(v.address)[0] == 1
    s.on_endpoint_removed(v.address, NOW + 0.2)
    assert s.endpoint_state(v.address) is None
    assert s.inflight.extra(v.address) == (0, 0)
    assert s.prefix.match([1, 2]) == {}


def test_round_robin_cycles_through_the_pool():
    vs = views({}, {}, {})
    s = sched("round-robin")
    firsts = [s.schedule(req(f"r{k}"), vs, NOW).endpoints[0] for k in range(6)]
    assert firsts == [v.address for v in vs] * 2


def test_large_pools_score_a_window_plus_the_affinity_holders():
    config = {
        "profiles": {
            "w": {
                "scorers": [
                    {"type": "expected-work", "weight": 1},
                    {"type": "lora-affinity", "weight": 10},
                    {"type": "prefix-affinity", "weight": 10},
                ],
                "max_candidates": 4,
            }
        }
    }
    specs = [{"kv_usage": 0.5} for _ in range(40)]
    specs[33] = {"kv_usage": 0.5, "lora": {"running": ["sql"], "max_lora": 1}}
    vs = views(*specs)
    s = sched("w", config=config)
    for k in range(20):  # the only pod running the adapter is found though the window is 4 wide
        d = s.schedule(req(f"a{k}", model="sql", criticality="Critical"), vs, NOW)
        assert d.endpoints[0] == vs[33].address
        assert len(set(d.endpoints)) == 3
    s.on_assigned(req("warm", prefix_hashes=[5, 6, 7]), vs[17].address, NOW - 10)
    for k in range(20):
        d = s.schedule(req(f"p{k}", prefix_hashes=[5, 6, 7], criticality="Critical"), vs, NOW)
        assert d.endpoints[0] == vs[17].address
    seen = {s.schedule(req(f"b{k}"), vs, NOW).endpoints[0] for k in range(60)}
    assert len(seen) > 4  # the window moves: every pod can be chosen


def test_default_profile_windows_only_large_pools():
    s = sched("default")
    assert s.max_candidates == 256
    vs = views(*({"waiting": 1} for _ in range(300)))
    d = s.schedule(req(), vs, NOW)
    assert d.ok and len(set(d.endpoints)) == 3


def test_the_kept_candidate_split_equals_a_fresh_walk_through_snapshots_and_time():
    """PoolState keeps its fresh/stale split across decisions; it must always equal a walk."""
    import random

    from sched_helpers import BASE, snap

    from picker.scheduling.api import RequestInfo
    from picker.scheduling.pool import PoolState

    rng = random.Random(11)
    state = PoolState()
    r = RequestInfo("r", BASE, BASE)
    now = 100.0

    def walk() -> tuple[list, list]:
        fresh = [s for s in state._states.values() if s.ok and now <= s.fresh_until]
        stale = [s for s in state._states.values() if s.ok and now > s.fresh_until]
        return fresh, stale

    for step in range(4000):
        now += rng.choice([0.0, 0.001, 0.01, 0.05])
        i = rng.randrange(12)
        kind = rng.random()
        if kind < 0.05:
            state.on_endpoint_removed(f"10.0.0.{i}:8000", now)
        elif kind < 0.7:  # a scrape: fresh, late, failing, not ready or unhealthy
            late = rng.choice([0.0, 0.0, 0.0, 0.15, 0.3, 1.0])
            bad = [{"consecutive_failures": 1}, {"ready": False}, {"healthy": False}]
            extra = rng.choice([{}, {}, {}, *bad])
            state.on_snapshot(snap(i, ts=now - late, **extra), now)
        state.advance(now)
        fresh, stale = state._gather(r, now)
        assert (fresh, stale) == walk(), step
        fresh.reverse()  # callers get copies: reordering theirs must not touch the kept split
        assert state._gather(r, now) == walk()
