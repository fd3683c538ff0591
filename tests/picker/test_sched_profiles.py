"""Each named profile on small crafted pools."""

from __future__ import annotations

from collections import Counter

from sched_helpers import NOW, req, sched, views

from shared.hashing import prefix_block_hashes

# -- gie-v0: the v0.2/v0.3 decision tree -----------------------------------------------


def test_gie_v0_sheds_sheddable_when_every_queue_is_over_5():
    vs = views({"waiting": 6}, {"waiting": 9}, {"waiting": 7})
    s = sched("gie-v0")
    d = s.schedule(req(criticality="Sheddable"), vs, NOW)
    assert d.status == 429 and d.profile == "gie-v0"
    assert s.schedule(req(criticality="Critical"), vs, NOW).ok


def test_gie_v0_sheddable_goes_to_a_pod_with_capacity():
    vs = views({"waiting": 0, "kv_usage": 0.9}, {"waiting": 8}, {"waiting": 3, "kv_usage": 0.5})
    s = sched("gie-v0")
    for k in range(20):
        assert s.schedule(req(f"r{k}", criticality="Sheddable"), vs, NOW).endpoints[0] == vs[2].address


def test_gie_v0_least_queue_band_then_random():
    # min 0, max 12, N 4: the band is [0, 3]: pods 0 and 1 only
    vs = views({"waiting": 0}, {"waiting": 3}, {"waiting": 12}, {"waiting": 12})
    s = sched("gie-v0")
    firsts = Counter(
        s.schedule(req(f"r{k}", criticality="Critical"), vs, NOW).endpoints[0] for k in range(80)
    )
    assert set(firsts) == {vs[0].address, vs[1].address}


def test_gie_v0_least_kv_after_queue():
    vs = views(
        {"waiting": 1, "kv_usage": 0.9}, {"waiting": 1, "kv_usage": 0.1}, {"waiting": 1, "kv_usage": 0.2}
    )
    s = sched("gie-v0")
    # KV band: [0.1, 0.1 + 0.8/3]: pods 1 and 2
    firsts = {s.schedule(req(f"r{k}", criticality="Critical"), vs, NOW).endpoints[0] for k in range(60)}
    assert firsts == {vs[1].address, vs[2].address}


def test_gie_v0_lora_affinity_for_critical():
    lora_full = {"running": ["x", "y"], "max_lora": 2}
    vs = views(
        {"lora": lora_full},
        {"lora": {"running": ["x", "a1"], "max_lora": 2}},
        {"lora": lora_full},
    )
    s = sched("gie-v0")
    r = [
        s.schedule(req(f"r{k}", model="a1", criticality="Critical"), vs, NOW).endpoints[0] for k in range(50)
    ]
    assert r.count(vs[1].address) >= 48  # affinity with probability 0.999


def test_gie_v0_without_low_queue_pods_uses_least_queue_first():
    # no pod under 128: least queue over all, band [130, 130 + 270/3 = 220]
    vs = views({"waiting": 300}, {"waiting": 130}, {"waiting": 400})
    d = sched("gie-v0").schedule(req(criticality="Critical"), vs, NOW)
    assert d.endpoints[0] == vs[1].address


# -- gie-v1: queue 2, KV 2, prefix 3 ---------------------------------------------------


def test_gie_v1_prefix_hit_outweighs_moderate_load():
    hashes = prefix_block_hashes("llama", "You are a helpful assistant. " * 40)
    vs = views({"waiting": 2, "kv_usage": 0.5}, {"waiting": 0, "kv_usage": 0.3})
    s = sched("gie-v1")
    s.on_assigned(req("warm", prefix_hashes=hashes), vs[0].address, NOW - 1)
    d = s.schedule(req("r", prefix_hashes=hashes), vs, NOW)
    # pod 0: queue 0 + kv 2*0.5 + prefix 3 = 4; pod 1: 2 + 2*0.7 + 0 = 3.4
    assert d.endpoints[0] == vs[0].address


def test_gie_v1_uses_raw_metrics_so_a_burst_herds():
    vs = views({}, {}, {})
    s = sched("gie-v1")
    for v in vs:
        s.on_snapshot(v.snapshot, NOW)
    s.on_assigned(req("a"), vs[0].address, NOW + 0.01)
    s.on_assigned(req("b"), vs[0].address, NOW + 0.01)
    firsts = {s.schedule(req(f"r{k}"), vs, NOW + 0.02).endpoints[0] for k in range(40)}
    assert vs[0].address in firsts  # in-flight work is invisible to the v1 scorers


# -- default: InferGate's own ----------------------------------------------------------


def test_default_spreads_a_burst_between_scrapes():
    vs = views({}, {}, {}, {})
    s = sched("default")
    for v in vs:
        s.on_snapshot(v.snapshot, NOW)
    chosen = Counter()
    for k in range(8):
        r = req(f"r{k}", prompt_tokens=300, expected_output_tokens=200)
        d = s.schedule(r, vs, NOW + 0.001 * k)
        s.on_assigned(r, d.endpoints[0], NOW + 0.001 * k)
        chosen[d.endpoints[0]] += 1
    assert sorted(chosen.values()) == [2, 2, 2, 2]


def test_default_counts_a_burst_once_the_snapshot_reflects_it():
    vs = views({}, {})
    s = sched("default")
    for v in vs:
        s.on_snapshot(v.snapshot, NOW)
    for k in range(3):
        s.on_assigned(req(f"a{k}", prompt_tokens=400, expected_output_tokens=100), vs[0].address, NOW + 0.01)
    assert s.schedule(req("r"), vs, NOW + 0.02).endpoints[0] == vs[1].address
    # The next scrape of pod 0 shows the three requests running; the in-flight entries retire.
    from sched_helpers import view

    v0 = view(0, ts=NOW + 0.1, running=3, kv_usage=1500 / 16000)
    s.on_snapshot(v0.snapshot, NOW + 0.1)
    assert s.inflight.extra(vs[0].address) == (0, 0)
    assert s.endpoint_state(vs[0].address).kv == 1500 / 16000


def test_default_keeps_a_prefix_on_its_pod_then_spills_when_busy():
    # The upstream shared-prefix shape: a 2,048-token system prompt, a 256-token question,
    # 256 output tokens, on H100-sized pods.
    system = prefix_block_hashes("llama", "You are InferGate's test assistant, be brief. " * 180)[:128]
    vs = views(*({"kv_capacity_tokens": 119_408} for _ in range(3)))
    s = sched("default")
    for v in vs:
        s.on_snapshot(v.snapshot, NOW)
    placements = []
    for k in range(12):
        r = req(f"r{k}", prompt_tokens=2048 + 256, prefix_hashes=system, expected_output_tokens=256)
        d = s.schedule(r, vs, NOW + 0.001 * k)
        s.on_assigned(r, d.endpoints[0], NOW + 0.001 * k)
        placements.append(d.endpoints[0])
    first = placements[0]
    assert placements[:4] == [first] * 4  # affinity: the cached prefix saves 2,048 tokens of prefill
    assert len(set(placements)) > 1  # but a hot prefix does not herd everything onto one pod


def test_default_a_small_prefix_does_not_outweigh_a_busy_pod():
    hashes = prefix_block_hashes("llama", "short shared preamble " * 12)  # 4 blocks
    vs = views({"waiting": 3, "kv_usage": 0.4}, {})
    s = sched("default")
    s.on_assigned(req("warm", prefix_hashes=hashes), vs[0].address, NOW - 1)
    d = s.schedule(req("r", prompt_tokens=300, prefix_hashes=hashes), vs, NOW)
    assert d.endpoints[0] == vs[1].address


def test_default_prefers_the_pod_with_the_adapter_loaded():
    vs = views(
        {"lora": {"running": ["a", "b"], "max_lora": 2}},
        {"lora": {"running": ["c", "sql"], "max_lora": 2}},
        {"lora": {"running": ["d", "e"], "max_lora": 2}},
    )
    s = sched("default")
    for k in range(10):
        d = s.schedule(req(f"r{k}", model="sql", prompt_tokens=200), vs, NOW)
        assert d.endpoints[0] == vs[1].address


def test_default_leaves_the_adapter_pod_when_it_is_much_busier():
    vs = views(
        {"lora": {"running": ["sql"], "max_lora": 2}, "waiting": 12, "kv_usage": 0.7},
        {"lora": {"running": [], "max_lora": 2}},
    )
    d = sched("default").schedule(req(model="sql", prompt_tokens=200), vs, NOW)
    assert d.endpoints[0] == vs[1].address


# -- trivial baselines -------------------------------------------------------------------


def test_random_profile_ignores_load():
    vs = views({"waiting": 0}, {"waiting": 100})
    s = sched("random")
    firsts = {s.schedule(req(f"r{k}"), vs, NOW).endpoints[0] for k in range(40)}
    assert firsts == {vs[0].address, vs[1].address}
