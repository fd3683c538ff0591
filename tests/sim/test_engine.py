"""The engine model alone, in virtual time."""

from __future__ import annotations

import random

import pytest

from sim.engine import DECODE, FINISHED, WAITING, Engine, EngineConfig, SimRequest
from sim.workloads import SharedPrefix, ShareGPTLike, chain_hashes, percentile


def drive(eng: Engine, until: float | None = None, t: float = 0.0, check: bool = False):
    """Step until idle (or ``until``); returns (end time, finished requests, all step results)."""
    done, steps = [], []
    while True:
        nt = eng.next_event_time(t)
        if nt is None or (until is not None and nt >= until):
            return t, done, steps
        res = eng.step(nt)
        steps.append(res)
        done.extend(res.finished)
        t = res.end if res.duration else nt
        if check:
            eng.check_invariants()


def cfg(**kw) -> EngineConfig:
    kw.setdefault("api_overhead_s", 0.0)
    kw.setdefault("enable_lora", False)
    return EngineConfig(**kw)


def test_single_request_timing_matches_step_formula():
    c = cfg(slowdown=1.0)
    eng = Engine(c)
    req = SimRequest("a", prompt_tokens=580, max_tokens=3)
    eng.add(req, 0.0)
    end, done, steps = drive(eng)
    assert done == [req] and req.state == FINISHED
    assert len(steps) == 3  # one prefill step that samples token 1, then two decode steps
    assert steps[0].tokens == 580 and steps[1].tokens == 1
    assert steps[0].duration == pytest.approx(0.0005 + 0.001 + 20e-6 * 580 + 0.196e-6 * 580)
    assert steps[1].duration == pytest.approx(0.0005 + 0.0056 + 0.196e-6 * 581)
    assert req.t_first_token == pytest.approx(steps[0].end)
    assert req.t_finished == pytest.approx(end)
    assert eng.kv_usage == 0.0
    eng.check_invariants()


def test_api_overhead_delays_scheduling():
    eng = Engine(cfg(api_overhead_s=0.010))
    req = SimRequest("a", 16, 1)
    eng.add(req, 1.0)
    assert eng.next_event_time(1.0) == pytest.approx(1.010)
    drive(eng, t=1.0)
    assert req.t_scheduled == pytest.approx(1.010)


def test_chunked_prefill_respects_token_budget():
    eng = Engine(cfg(max_num_batched_tokens=1024, max_num_seqs=8))
    for i in range(3):
        eng.add(SimRequest(str(i), 1000, 5), 0.0)
    _, done, steps = drive(eng, check=True)
    assert len(done) == 3
    assert all(s.tokens <= 1024 for s in steps)
    assert steps[0].tokens == 1024  # 1000 of request 0 + a 24-token chunk of request 1


def test_max_num_seqs_caps_running():
    eng = Engine(cfg(max_num_seqs=4))
    for i in range(10):
        eng.add(SimRequest(str(i), 20, 50), 0.0)
    eng.step(0.0)
    assert len(eng.running) == 4 and eng.n_waiting == 6
    _, done, _ = drive(eng, check=True)
    assert len(done) == 10


def test_preemption_when_kv_exhausted_and_recompute():
    # 40 blocks of KV; four requests that each grow to 2 + 30 blocks cannot all stay resident
    eng = Engine(cfg(kv_capacity_tokens=640, max_num_seqs=8, max_num_batched_tokens=640))
    reqs = [SimRequest(str(i), 32, 480) for i in range(4)]
    for r in reqs:
        eng.add(r, 0.0)
    _, done, steps = drive(eng, check=True)
    assert len(done) == 4
    assert eng.preemptions > 0
    pre = [r for s in steps for r in s.preempted]
    assert pre and all(r.num_preemptions >= 1 for r in pre)
    # the newest running request is the victim
    first_pre = next(s for s in steps if s.preempted).preempted[0]
    assert first_pre is reqs[-1] or first_pre.seq == max(r.seq for r in reqs if r.state != FINISHED)
    assert all(r.t_finished > 0 for r in reqs)
    assert eng.kv_usage == 0.0


def test_prefix_cache_hits_reduce_ttft():
    c = cfg()
    eng = Engine(c)
    hashes = chain_hashes(42, 2048 // 16)
    a = SimRequest("a", 2048, 1, hashes)
    eng.add(a, 0.0)
    end, _, _ = drive(eng)
    b = SimRequest("b", 2048, 1, hashes)
    eng.add(b, end)
    drive(eng, t=end)
    ttft_a = a.t_first_token - a.arrival
    ttft_b = b.t_first_token - b.arrival
    assert eng.cached_prefix_tokens(hashes) == 2048
    assert eng.cached_prefix_tokens(chain_hashes(43, 4)) == 0
    assert b.prefix_hit_tokens == 2032  # a full hit still recomputes the last block's token
    assert ttft_b < ttft_a / 3
    assert eng.prefix_hits == 2032 and eng.prefix_queries == 4096
    eng.check_invariants()


def test_lru_eviction_of_free_cached_blocks():
    eng = Engine(cfg(kv_capacity_tokens=64 * 16))  # 64 blocks
    h1 = chain_hashes(1, 32)
    eng.add(SimRequest("a", 512, 1, h1), 0.0)
    t, _, _ = drive(eng)
    assert len(eng._cached) == 32
    # a 60-block request must evict most of a's cached blocks (deepest first)
    eng.add(SimRequest("b", 60 * 16, 1, chain_hashes(2, 60)), t)
    t, _, _ = drive(eng, t=t, check=True)
    assert h1[0] in eng._cached or h1[-1] not in eng._cached
    assert h1[-1] not in eng._cached


def test_lora_max_loras_skips_without_blocking():
    eng = Engine(cfg(enable_lora=True, max_loras=2, max_cpu_loras=4, lora_load_s=0.05))
    for i, name in enumerate(["a", "b", "c", None, "a"]):
        eng.add(SimRequest(str(i), 32, 100, lora=name), 0.0)
    res = eng.step(0.0)
    running = {r.id for r in eng.running.values()}
    assert running == {"0", "1", "3", "4"}  # "c" skipped, the requests behind it admitted
    assert eng.waiting_loras == ["c"] and sorted(eng.running_loras) == ["a", "b"]
    assert res.duration > 0.1  # two adapters loaded from disk
    assert eng.lora_loads == 2
    drive(eng, t=res.end, check=True)
    assert eng.lora_loads == 3


def test_abort_frees_everything():
    eng = Engine(cfg(max_num_seqs=2))
    reqs = [SimRequest(str(i), 100, 1000) for i in range(4)]
    for r in reqs:
        eng.add(r, 0.0)
    t = 0.0
    for _ in range(5):
        t = eng.step(t).end
    assert reqs[0].state == DECODE and reqs[3].state == WAITING
    assert eng.abort("0") and eng.abort("3") and not eng.abort("3")
    eng.check_invariants()
    assert eng.n_waiting == 1 and len(eng.running) == 1
    assert eng.abort("1") and eng.abort("2")
    assert not eng.has_work and eng.kv_usage == 0.0 and eng.num_requests == 0
    eng.check_invariants()


def test_priority_policy_orders_waiting():
    eng = Engine(cfg(max_num_seqs=1, scheduling_policy="priority"))
    eng.add(SimRequest("low", 16, 2, priority=5), 0.0)
    eng.add(SimRequest("x", 16, 2, priority=1), 0.0)
    eng.add(SimRequest("hi", 16, 2, priority=0), 0.0)
    _, done, _ = drive(eng, check=True)
    assert [r.id for r in done] == ["hi", "x", "low"]


@pytest.mark.parametrize("caching", [True, False])
def test_random_workload_invariants(caching):
    rng = random.Random(7)
    eng = Engine(
        cfg(
            kv_capacity_tokens=16 * 200,
            max_num_seqs=32,
            max_num_batched_tokens=512,
            enable_prefix_caching=caching,
            enable_lora=True,
            max_loras=2,
            lora_load_s=0.01,
        )
    )
    sp = SharedPrefix(
        rng, groups=4, prompts_per_group=4, system_tokens=256, question_tokens=64, output_tokens=40
    )
    sg = ShareGPTLike(rng)
    t = 0.0
    ids = 0
    live = []
    for _ in range(600):
        if rng.random() < 0.3:
            w = sp.sample() if rng.random() < 0.5 else sg.sample()
            p, o = min(w.prompt_tokens, 1500), min(w.output_tokens, 300)
            r = SimRequest(str(ids), p, o, w.block_hashes[: p // 16], rng.choice([None, "a", "b", "c"]))
            ids += 1
            eng.add(r, t)
            live.append(r)
        if rng.random() < 0.03 and live:
            eng.abort(rng.choice(live).id)
        nt = eng.next_event_time(t)
        if nt is not None:
            res = eng.step(nt)
            t = res.end if res.duration else nt
        eng.check_invariants()
    drive(eng, t=t, check=True)
    assert eng.kv_usage == 0.0 and not eng.has_work
    assert eng.finished + eng.aborted == ids
    assert eng.preemptions > 0 and (eng.prefix_hits > 0) == caching


def test_tokens_derivable_during_decode():
    eng = Engine(cfg())
    r = SimRequest("a", 16, 50)
    eng.add(r, 0.0)
    t = 0.0
    seen = []
    while r.state != FINISHED:
        t = eng.step(t).end
        seen.append(eng.num_output(r))
    assert seen == list(range(1, 51))


def test_sharegpt_sampler_matches_fit():
    s = ShareGPTLike(random.Random(3), hashes=False)
    xs = [s.lengths() for _ in range(20000)]
    ps = [p for p, _ in xs]
    os_ = [o for _, o in xs]
    assert all(4 <= p <= 1024 and o >= 4 and p + o <= 2048 for p, o in xs)
    assert 90 <= percentile(ps, 50) <= 130  # design.md: median 109
    assert 120 <= percentile(os_, 50) <= 170  # median 144
    assert 190 <= sum(os_) / len(os_) <= 250  # mean 225
