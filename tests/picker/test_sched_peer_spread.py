"""Peer spread: replicas sharing one view keep their near-simultaneous choices apart."""

from __future__ import annotations

import pytest
from sched_helpers import NOW, build, req, sched, views

from picker.scheduling import ConfigError

# Three near-equal pods and a busy one: any of the three is a fine choice, the fourth is not.
NEAR_TIE = ({"kv_usage": 0.100}, {"kv_usage": 0.101}, {"kv_usage": 0.102}, {"kv_usage": 0.5})


def ranked(index: int, count: int, profile: str = "default"):
    s = sched(profile)
    s.set_peer_rank(index, count)
    return s


def first(s, vs, rid: str = "r1", **kw) -> str:
    return s.schedule(req(rid, prompt_tokens=300, expected_output_tokens=200, **kw), vs, NOW).endpoints[0]


@pytest.mark.parametrize("profile", ["default", "default-spread"])
def test_replicas_with_one_view_choose_different_pods_among_the_near_best(profile):
    vs = views(*NEAR_TIE)
    choices = [first(ranked(i, 3, profile), vs) for i in range(3)]
    # Best first, in the same order on every replica: rank i takes the i-th best.
    assert choices == [vs[0].address, vs[1].address, vs[2].address]
    # A lone replica (or a replica told it is alone) takes the best, as plain max-score does.
    assert first(sched(profile), vs) == vs[0].address
    assert first(ranked(0, 1, profile), vs) == vs[0].address


def test_more_replicas_than_near_best_pods_wrap_around_and_never_take_a_bad_pod():
    vs = views(*NEAR_TIE)
    choices = [first(ranked(i, 5), vs) for i in range(5)]
    assert choices == [vs[0].address, vs[1].address, vs[2].address, vs[0].address, vs[1].address]
    assert vs[3].address not in choices


def test_a_clearly_better_pod_is_every_replicas_choice():
    vs = views({"kv_usage": 0.1}, {"kv_usage": 0.4}, {"kv_usage": 0.41}, {"kv_usage": 0.42})
    assert {first(ranked(i, 4), vs) for i in range(4)} == {vs[0].address}


def test_a_prefix_hit_outweighs_the_spread():
    vs = views(*NEAR_TIE)
    hashes = list(range(100, 120))
    replicas = [ranked(i, 3) for i in range(3)]
    for s in replicas:  # every replica knows (its own or a peer's) request that left the prefix on pod 2
        s.on_assigned(req("earlier", prompt_tokens=320, prefix_hashes=hashes), vs[2].address, NOW - 30)
        s.on_completed("earlier", NOW - 1)
    assert {first(s, vs, prefix_hashes=hashes) for s in replicas} == {vs[2].address}


def test_in_an_idle_pool_every_rank_takes_a_different_pod_in_address_order():
    vs = views({}, {}, {}, {})  # every scorer scores them alike
    by_address = sorted(v.address for v in vs)
    assert [first(ranked(i, 4), vs) for i in range(4)] == by_address


def test_fallbacks_stay_distinct_and_follow_the_scores():
    vs = views(*NEAR_TIE)
    d = ranked(2, 3).schedule(req(prompt_tokens=300), vs, NOW)
    assert d.endpoints[0] == vs[2].address
    assert d.endpoints[1:] == [vs[0].address, vs[1].address]  # 1 + fallbacks (2), best of the rest first


def test_own_assignment_moves_the_next_choice_on():
    vs = views(*NEAR_TIE)
    s = ranked(1, 2)
    a = first(s, vs, "r1")
    s.on_assigned(req("r1", prompt_tokens=3000, expected_output_tokens=2000), a, NOW)
    assert first(s, vs, "r2") != a


@pytest.mark.parametrize("rank", [(-1, 2), (2, 2), (0, 0), (3, -1)])
def test_a_nonsense_rank_means_alone(rank):
    s = sched()
    s.set_peer_rank(*rank)
    assert (s.peer_index, s.peer_count) == (0, 1)


@pytest.mark.parametrize("profile", ["gie-v1", "random", "round-robin", "gie-v0"])
def test_profiles_without_peer_margin_ignore_the_rank(profile):
    vs = views(*NEAR_TIE)
    # Same seed, same decisions, whatever the rank says.
    assert first(ranked(1, 3, profile), vs) == first(sched(profile), vs)


def test_peer_margin_is_validated():
    cfg = {"version": 1, "profiles": {"p": {"picker": {"type": "max-score", "peer_margin": -1}}}}
    with pytest.raises(ConfigError, match=r"profiles\.p\.picker\.peer_margin"):
        build("p", cfg)
    cfg["profiles"]["p"]["picker"]["peer_margin"] = "wide"
    with pytest.raises(ConfigError, match="must be a number"):
        build("p", cfg)


def test_the_spread_never_moves_a_request_away_from_the_pods_that_hold_its_prefix():
    # A weak prefix bonus and a short prefix (2 blocks: a small prefill saving), together
    # well inside the margin: the spread alone would send ranks 1-3 to other pods.
    cfg = {
        "version": 1,
        "profiles": {
            "p": {
                "scorers": [
                    {"type": "expected-work", "weight": 4, "floor": 0.05},
                    {"type": "prefix-cache", "weight": 0.1},
                ],
                "picker": {"type": "max-score", "peer_margin": 0.4},
            }
        },
    }
    vs = views({}, {}, {}, {})
    hashes = [200, 201]

    def replica(i: int, holders: list[int]):
        s = sched("p", config=cfg)
        s.set_peer_rank(i, 4)
        for h in holders:
            s.on_assigned(req(f"old-{h}", prompt_tokens=32, prefix_hashes=hashes), vs[h].address, NOW - 30)
            s.on_completed(f"old-{h}", NOW - 1)
        return s

    one_holder = {first(replica(i, [2]), vs, prefix_hashes=hashes) for i in range(4)}
    assert one_holder == {vs[2].address}
    two_holders = [first(replica(i, [1, 3]), vs, prefix_hashes=hashes) for i in range(4)]
    assert set(two_holders) == {vs[1].address, vs[3].address}  # spread, but only over the holders
    assert two_holders[0] != two_holders[1]


def test_the_margin_shrinks_when_peers_rarely_choose_in_the_same_window():
    # Pod 1 trails pod 0 by a fifth of the default margin, pod 2 by half of it.
    cfg = {
        "version": 1,
        "profiles": {
            "p": {
                "scorers": [{"type": "kv-cache", "weight": 1, "include_inflight": False}],
                "picker": {"type": "max-score", "peer_margin": 0.1},
            }
        },
    }
    vs = views({"kv_usage": 0.10}, {"kv_usage": 0.12}, {"kv_usage": 0.15}, {"kv_usage": 0.9})

    def choices(unseen: float) -> list[str]:
        out = []
        for i in range(3):
            s = sched("p", config=cfg)
            s.set_peer_rank(i, 3, unseen)
            out.append(first(s, vs))
        return out

    a = [v.address for v in vs]
    assert choices(1.0) == [a[0], a[1], a[2]]  # a peer is usually choosing too: full margin
    assert choices(5.0) == [a[0], a[1], a[2]]  # capped at the full margin
    assert choices(0.3) == [a[0], a[1], a[0]]  # 0.03 points: only pod 1 is near
    assert choices(0.0) == [a[0], a[0], a[0]]  # peers idle: plain max-score
