"""Property: ``schedule()`` and the hooks never raise, whatever the snapshots and requests."""

from __future__ import annotations

import math
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import build

from picker.scheduling import CRITICALITIES, EndpointView, RequestInfo
from shared.schemas import EndpointSnapshot, LoraState

PROFILES = ["default", "default-spread", "gie-v0", "gie-v1", "random", "round-robin"]
ADDRS = [f"10.0.0.{i}:8000" for i in range(6)] + ["10.0.0.1:9000", "weird", ""]
NAMES = st.sampled_from(["llama", "a1", "a2", "", "ünïcode"])
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _snapshot(addr, ready, healthy, waiting, running, kv, cap, bs, model, lr, lw, ml, ts, fails):
    return EndpointSnapshot(
        namespace="ns",
        pool="p",
        pod=addr,
        address=addr,
        ready=ready,
        healthy=healthy,
        waiting=waiting,
        running=running,
        kv_usage=kv,
        kv_capacity_tokens=cap,
        block_size=bs,
        model=model,
        lora=LoraState(running=lr, waiting=lw, max_lora=ml),
        ts=ts,
        consecutive_failures=fails,
    )


snapshots = st.builds(
    _snapshot,
    st.sampled_from(ADDRS),
    st.booleans(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.integers(-5, 10**6),
    FLOATS,
    st.integers(-10, 10**7),
    st.integers(-1, 64),
    NAMES,
    st.lists(NAMES, max_size=4),
    st.lists(NAMES, max_size=2),
    st.integers(-1, 8),
    st.one_of(st.just(0.0), st.floats(990, 1010), FLOATS),
    st.integers(0, 3),
)

requests = st.builds(
    lambda rid, model, target, crit, pt, hashes, out, cands: RequestInfo(
        request_id=rid,
        model=model,
        target_model=target,
        criticality=crit,
        prompt_tokens=pt,
        prefix_hashes=hashes,
        expected_output_tokens=out,
        candidates=cands,
    ),
    st.sampled_from(["r1", "r2", "r3", ""]),
    NAMES,
    NAMES,
    st.sampled_from(CRITICALITIES),
    st.integers(-10, 10**6),
    st.lists(st.integers(0, 7), max_size=40),
    st.integers(-10, 10**5),
    st.one_of(st.none(), st.frozensets(st.sampled_from([*ADDRS, "10.0.0.2", "1.2.3.4"]), max_size=3)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    profile=st.sampled_from(PROFILES),
    snaps=st.lists(snapshots, max_size=8),
    reqs=st.lists(requests, min_size=1, max_size=4),
    now=st.one_of(st.floats(990, 1010), FLOATS),
    hooks=st.lists(st.sampled_from(["snap", "assign", "done", "remove"]), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_schedule_never_raises(profile, snaps, reqs, now, hooks, seed):
    s = build(profile, rng=random.Random(seed))
    # The pool holds one snapshot per address (the last one applied), as a real view does.
    views = list({x.address: EndpointView(x.address, x, 1000.0) for x in snaps}.values())
    rng = random.Random(seed)
    for r in reqs:
        for h in hooks:
            if h == "snap" and snaps:
                s.on_snapshot(rng.choice(snaps), now)
            elif h == "assign":
                s.on_assigned(r, rng.choice(ADDRS), now, replica="peer")
            elif h == "done":
                s.on_completed(r.request_id, now)
            elif h == "remove":
                s.on_endpoint_removed(rng.choice(ADDRS), now)
        d = s.schedule(r, views, now)
        assert d.status in (200, 429, 503)
        if d.status == 200:
            assert d.endpoints and len(set(d.endpoints)) == len(d.endpoints)
            assert set(d.endpoints) <= {v.address for v in views}
            assert len(d.endpoints) <= 3
        else:
            assert d.endpoints == [] and d.reason
        if d.status == 503:
            cands = r.candidates
            assert not any(
                v.snapshot.ready and v.snapshot.healthy and (cands is None or v.address in cands)
                for v in views
            )
        if d.status == 429:
            assert r.criticality == "Sheddable"


def test_sanitized_state_has_no_nan():
    s = build("default")
    snap = EndpointSnapshot(namespace="n", pool="p", pod="x", address="a:1", kv_usage=math.nan, waiting=-3)
    s.on_snapshot(snap, 1.0)
    st_ = s.endpoint_state("a:1")
    assert st_ is not None and st_.kv == 1.0 and st_.waiting == 0
