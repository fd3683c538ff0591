"""Each scorer on small crafted groups."""

from __future__ import annotations

from sched_helpers import ctx, req, state

from picker.scheduling.inflight import Load
from picker.scheduling.prefix import PrefixIndex
from picker.scheduling.scorers import (
    ExpectedWorkScorer,
    InflightScorer,
    KVCacheScorer,
    LoraAffinityScorer,
    QueueScorer,
    lora_affinity,
)


def _load(n: int, tokens: int) -> Load:
    load = Load()
    load.n, load.tokens = n, tokens
    return load


def test_queue_scorer_min_max():
    group = [state(0, waiting=2), state(1, waiting=10), state(2, waiting=6)]
    assert QueueScorer(include_inflight=False).score(ctx(), group) == [1.0, 0.0, 0.5]


def test_queue_scorer_equal_queues_is_uniform():
    group = [state(0, waiting=3), state(1, waiting=3)]
    assert QueueScorer().score(ctx(), group) is None


def test_queue_scorer_adds_inflight_only_when_asked():
    group = [state(0, waiting=0, load=_load(4, 0)), state(1, waiting=2)]
    assert QueueScorer(include_inflight=True).score(ctx(), group) == [0.0, 1.0]
    assert QueueScorer(include_inflight=False).score(ctx(), group) == [1.0, 0.0]


def test_kv_scorer_is_one_minus_usage():
    group = [state(0, kv_usage=0.25), state(1, kv_usage=1.0)]
    assert KVCacheScorer(include_inflight=False).score(ctx(), group) == [0.75, 0.0]


def test_kv_scorer_with_inflight_tokens_clipped_at_zero():
    # capacity 16,000 tokens: 8,000 in-flight tokens are half of it
    group = [state(0, kv_usage=0.25, load=_load(1, 8000)), state(1, kv_usage=0.9, load=_load(1, 8000))]
    assert KVCacheScorer(include_inflight=True).score(ctx(), group) == [0.25, 0.0]


def test_lora_affinity_levels():
    lora = {"running": ["a1", "a2"], "waiting": ["a3"], "max_lora": 2}
    full = state(0, lora=lora)
    free = state(1, lora={"running": ["a1"], "waiting": [], "max_lora": 2})
    assert lora_affinity(full, "a1") == 1.0
    assert lora_affinity(free, "a9") == 0.8
    assert lora_affinity(full, "a3") == 0.6
    assert lora_affinity(full, "a9") == 0.0
    assert lora_affinity(full, "llama") == 1.0  # the base model
    scores = LoraAffinityScorer().score(ctx(req(target_model="a9", model="m")), [full, free])
    assert scores == [0.0, 0.8]


def test_lora_affinity_base_request_scores_one_everywhere_serving_it():
    group = [state(0), state(1, lora={"running": ["x"], "max_lora": 1})]
    c = ctx(req(target_model="llama"))
    c.base_models = {"llama": 2}
    assert LoraAffinityScorer().score(c, group) is None  # uniform 1
    c.base_models = {"llama": 1, "other": 1}
    assert LoraAffinityScorer().score(c, group) == [1.0, 1.0]
    unknown = state(2, model="", lora={"max_lora": 0})
    assert lora_affinity(unknown, "llama") == 1.0


def test_inflight_scorer():
    group = [state(0, load=_load(3, 0)), state(1, load=_load(1, 0))]
    assert InflightScorer().score(ctx(), group) == [0.0, 1.0]


def test_expected_work_prefers_less_demand_and_counts_inflight_tokens():
    group = [state(0, kv_usage=0.5), state(1, kv_usage=0.1, load=_load(3, 8000))]  # 8000/16000 = 0.5
    scores = ExpectedWorkScorer(floor=0.0).score(ctx(req(prompt_tokens=100)), group)
    assert scores is not None and scores[0] == 1.0 and scores[1] == 0.0


def test_expected_work_counts_waiting_at_average_size():
    group = [state(0, waiting=4), state(1, waiting=0, kv_usage=0.05)]
    scores = ExpectedWorkScorer(floor=0.0).score(ctx(req(prompt_tokens=100)), group)
    assert scores == [0.0, 1.0]  # 4 x 500 tokens = 0.125 > 0.05


def test_expected_work_subtracts_cached_prefix():
    idx = PrefixIndex()
    hashes = list(range(1, 65))  # 64 blocks = 1,024 tokens
    a, b = state(0, kv_usage=0.02), state(1, kv_usage=0.0)
    idx.add(a.address, hashes)
    c = ctx(req(prompt_tokens=1100, prefix_hashes=hashes), prefix=idx)
    scores = ExpectedWorkScorer(floor=0.0).score(c, [a, b])
    assert scores == [1.0, 0.0]  # saving 1,024 tokens (0.064) beats 0.02 more KV use


def test_expected_work_floor_limits_swing_of_small_differences():
    group = [state(0, kv_usage=0.10), state(1, kv_usage=0.11)]
    scores = ExpectedWorkScorer(floor=0.1).score(ctx(req()), group)
    assert scores is not None
    assert scores[0] == 0.1 / 1.0 or abs(scores[0] - 0.1) < 1e-9
    assert scores[1] == 0.0
    assert all(0.0 <= x <= 1.0 for x in scores)


def test_expected_work_weights_for_kv_and_prompt():
    # pod 0 holds more KV; pod 1 has the longer queue of in-flight tokens
    group = [state(0, kv_usage=0.4), state(1, kv_usage=0.0, load=_load(2, 4000))]  # 4000/16000 = 0.25
    c = ctx(req(prompt_tokens=100))
    assert ExpectedWorkScorer(floor=0.0, kv_weight=1.0).score(c, group) == [0.0, 1.0]
    assert ExpectedWorkScorer(floor=0.0, kv_weight=0.5).score(c, group) == [1.0, 0.0]


def test_expected_work_prompt_weight_scales_the_prefix_saving():
    idx = PrefixIndex()
    hashes = list(range(1, 33))  # 32 blocks = 512 tokens
    a, b = state(0, kv_usage=0.05), state(1, kv_usage=0.0)
    idx.add(a.address, hashes)
    c = ctx(req(prompt_tokens=512, prefix_hashes=hashes), prefix=idx)
    # saving 512 tokens = 0.032 of capacity: less than a's extra 0.05 at weight 1, more at weight 2
    assert ExpectedWorkScorer(floor=0.0, prompt_weight=1.0).score(c, [a, b]) == [0.0, 1.0]
    c = ctx(req(prompt_tokens=512, prefix_hashes=hashes), prefix=idx)
    assert ExpectedWorkScorer(floor=0.0, prompt_weight=2.0).score(c, [a, b]) == [1.0, 0.0]


def test_prefix_affinity_is_gated_by_load():
    from picker.scheduling.scorers import PrefixAffinityScorer

    idx = PrefixIndex()
    hashes = [11, 12, 13, 14]
    busy, idle, cold = state(0, waiting=20), state(1), state(2)
    idx.add(busy.address, hashes)
    idx.add(idle.address, hashes[:2])
    c = ctx(req(prompt_tokens=64, prefix_hashes=hashes), prefix=idx)
    group = [busy, idle, cold]
    assert PrefixAffinityScorer().score(c, group) == [1.0, 0.5, 0.0]  # no load scores yet: plain prefix
    work = ExpectedWorkScorer(floor=0.0).score(c, group)
    assert work is not None and work[0] == 0.0
    gated = PrefixAffinityScorer().score(c, group)
    assert gated is not None and gated[0] == 0.0 and 0.0 < gated[1] <= 0.5 and gated[2] == 0.0
