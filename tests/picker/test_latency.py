"""The online latency model and the slo-latency selector, on an in-memory pool state (no bus)."""

from __future__ import annotations

import random

import pytest

from picker.latency import LatencyPredictor, OnlineRegression
from picker.scheduling import RequestInfo, build_profile
from picker.scheduling.slo import SloLatencySelector
from shared.schemas import EndpointSnapshot

SPEED = {"fast": 1.0, "slow": 3.0}
COST = {"fast": 3.0, "slow": 1.0}


def test_rls_recovers_a_linear_law():
    rng = random.Random(1)
    m = OnlineRegression(3)
    for _ in range(200):
        x = [1.0, rng.uniform(0, 2), rng.uniform(0, 5)]
        m.update(x, 4.0 + 10.0 * x[1] + 2.5 * x[2])
    assert m.w == pytest.approx([4.0, 10.0, 2.5], rel=1e-3)
    m.update([1.0, float("nan"), 0.0], 1.0)  # ignored
    assert m.n == 200
    # fitted on relative errors (each row scaled by 1 / target): the same law
    r = OnlineRegression(3, prior_var=1e6)
    for _ in range(200):
        x = [1.0, rng.uniform(0, 2), rng.uniform(0, 5)]
        y = 4.0 + 10.0 * x[1] + 2.5 * x[2]
        r.update(x, y, 1.0 / y)
    assert r.w == pytest.approx([4.0, 10.0, 2.5], rel=1e-3)
    r.update([1.0, 1.0, 1.0], 5.0, 0.0)  # a non-positive scale teaches nothing
    assert r.n == 200


def _textbook_update(w, p, x, y, lam, nonneg):
    """The oracle: RLS with forgetting in its textbook form (k = P x / (lam + x' P x), ...)."""
    d = len(w)
    px = [sum(p[i][j] * x[j] for j in range(d)) for i in range(d)]
    denom = lam + sum(x[i] * px[i] for i in range(d))
    if denom <= 1e-12:  # a degenerate sample (P no longer positive along x) is skipped
        return w, p
    k = [v / denom for v in px]
    err = y - sum(w[i] * x[i] for i in range(d))
    w = [w[i] + k[i] * err for i in range(d)]
    for i in nonneg:
        if w[i] < 0.0 and p[i][i] > 0.0:
            c = w[i] / p[i][i]
            w = [w[j] - p[j][i] * c for j in range(d)]
            w[i] = 0.0
    inv = 1.0 / lam  # as the product divides: the lull amplifies any rounding difference
    p = [[(p[i][j] - k[i] * px[j]) * inv for j in range(d)] for i in range(d)]

    def sym(i: int, j: int) -> float:  # the mean of the two triangles, upper one first
        lo, hi = min(i, j), max(i, j)
        return p[i][j] if i == j else (p[lo][hi] + p[hi][lo]) * 0.5

    p = [[sym(i, j) for j in range(d)] for i in range(d)]
    tr = sum(p[i][i] for i in range(d))
    if tr > 1e8:
        p = [[v * (1e8 / tr) for v in row] for row in p]
    return w, p


def test_rls_update_is_the_textbook_recursion_and_survives_a_lull():
    """The hand-written loops against the textbook formulas, projections and trace cap included.

    Strong forgetting and a long run of identical rows: the unsymmetrized update went
    indefinite here after 751 samples and skipped every later one (the model froze).
    """
    rng = random.Random(4)
    m = OnlineRegression(3, 0.95, prior_var=1e6, nonneg=(1, 2))
    w, p = list(m.w), [list(r) for r in m.p]
    for step in range(3000):
        x = [1.0, rng.uniform(0, 3), rng.uniform(0, 2)]
        # a law whose slope flips sign mid-way drives the projections; lulls (x constant) grow P
        y = 20.0 + (8.0 if step < 1500 else -3.0) * x[1] + rng.gauss(0, 2)
        if 2000 < step < 2600:
            x = [1.0, 0.5, 0.5]
        sc = 1.0 / abs(y)
        m.update(x, y, sc)
        w, p = _textbook_update(w, p, [v * sc for v in x], y * sc, 0.95, (1, 2))
        assert m.w == pytest.approx(w, rel=1e-9, abs=1e-12)
    assert m.p == [pytest.approx(r, rel=1e-9, abs=1e-9) for r in p]
    assert m.n == 3000 and m.resets == 0  # every sample learnt, P definite throughout
    # after the flip the slope (-3) is outside the constraint: w1 = 0 and the intercept
    # absorbs the mean of y (11..20, weighted towards the small values by the relative fit)
    assert m.w[1] == 0.0 and 11.0 < m.w[0] < 20.0 and 0.0 <= m.w[2] < 1.0


def snap(addr: str, accel: str, waiting=0, running=0, kv=0.0, ts=0.0) -> EndpointSnapshot:
    return EndpointSnapshot(
        namespace="ns",
        pool="p",
        pod=addr,
        address=addr,
        model="m",
        waiting=waiting,
        running=running,
        kv_usage=kv,
        kv_capacity_tokens=100_000,
        accelerator=accel,
        cost_per_hour=COST[accel],
        ts=ts,
    )


def truth(accel: str, prompt: int, running: int, waiting: int) -> tuple[float, float]:
    """A synthetic pod: TTFT and TPOT (ms) linear in the work ahead, scaled by the hardware."""
    s = SPEED[accel]
    return s * (15 + 0.05 * prompt + 4 * running), s * (8 + 0.3 * (running + waiting))


def train(profile, n=400, seed=3, replicas=("me", "peer")):
    """Assignments and completions as the shared view delivers them: this replica's and a peer's."""
    rng = random.Random(seed)
    state = profile.state
    addrs = [("a:1", "fast"), ("b:1", "slow")]
    t = 1.0
    for i in range(n):
        addr, accel = addrs[i % 2]
        running, waiting = rng.randint(0, 30), 0
        state.on_snapshot(snap(addr, accel, waiting, running, ts=t), t)
        prompt = rng.randint(10, 1000)
        req = RequestInfo(f"r{i}", "m", "m", prompt_tokens=prompt)
        replica = replicas[i % len(replicas)]
        state.on_assigned(req, addr, t, replica=replica)
        ttft, tpot = truth(accel, prompt, running, waiting)
        out = 100
        latency = (ttft + tpot * (out - 1)) / 1e3
        state.on_completed(
            f"r{i}", t, replica=replica, status=200, ttft_s=ttft / 1e3, latency_s=latency, output_tokens=out
        )
        t += 0.01
    return state


def predictor_of(profile) -> LatencyPredictor:
    (pred,) = profile.state.observers
    return pred


def test_learns_per_accelerator_from_local_and_peer_completions():
    p = build_profile("predicted-latency", rng=random.Random(1))
    train(p)
    pred = predictor_of(p)
    assert pred.samples == 400 and pred.pending == 0
    assert set(pred.models) == {"fast", "slow"}
    # recent predictions (made before each completion was learnt) are within a few percent
    assert pred.mape("ttft") < 0.1 and pred.mape("tpot") < 0.1  # warm-up included
    recent = list(pred.errors["ttft"].window)[-100:]
    assert sum(recent) / len(recent) < 0.01  # the law is linear: once learnt, nearly exact
    assert 0 < pred.mape("ttft", "slow") < 0.1
    state = p.state
    state.on_snapshot(snap("a:1", "fast", 0, 10, ts=10.0), 10.0)
    state.on_snapshot(snap("b:1", "slow", 0, 10, ts=10.0), 10.0)
    group = [state.endpoint_state("a:1"), state.endpoint_state("b:1")]
    out = pred.predict(group, [500, 500])
    assert out.ttft_ms == pytest.approx(
        [truth("fast", 500, 10, 0)[0], truth("slow", 500, 10, 0)[0]], rel=0.05
    )
    assert out.tpot_ms == pytest.approx(
        [truth("fast", 500, 10, 0)[1], truth("slow", 500, 10, 0)[1]], rel=0.05
    )


def test_the_inline_prediction_is_the_model_on_the_learnt_features():
    """predict() folds the features' units into the weights; it must equal the model on ttft/tpot_features."""
    from picker.latency.features import tpot_features, ttft_features

    p = build_profile("predicted-latency", rng=random.Random(1))
    state = train(p)
    pred = predictor_of(p)
    state.on_snapshot(snap("a:1", "fast", 3, 7, kv=0.4, ts=10.0), 10.0)
    state.on_snapshot(snap("b:1", "slow", 1, 12, kv=0.2, ts=10.0), 10.0)
    state.on_assigned(RequestInfo("x", "m", "m", prompt_tokens=300), "a:1", 10.0)  # in flight counts too
    for k, (ma, mb) in enumerate(pred.models.values()):  # every term non-zero, so each one is checked
        ma.w = [5.0 + k, 0.7, 3.0 + k]
        mb.w = [8.0, 0.9 + k, 0.6]
    group = [state.endpoint_state("a:1"), state.endpoint_state("b:1")]
    out = pred.predict(group, [700, 50])
    for i, st in enumerate(group):
        ma, mb = pred.models[st.accelerator]
        assert out.ttft_ms[i] == pytest.approx(ma.predict(ttft_features(st, [700, 50][i])), rel=1e-9)
        assert out.tpot_ms[i] == pytest.approx(mb.predict(tpot_features(st)), rel=1e-9)


def test_failed_and_untimed_completions_teach_nothing_and_pending_is_bounded():
    pred = LatencyPredictor(max_pending=10, pending_ttl_s=5.0)
    p = build_profile("gie-v1")
    pred.bind_state(p.state)
    pred.bind_state(p.state)  # idempotent
    assert p.state.observers.count(pred) == 1
    p.state.on_snapshot(snap("a:1", "fast", ts=1.0), 1.0)
    for i in range(30):
        p.state.on_assigned(RequestInfo(f"r{i}", "m", "m", prompt_tokens=10), "a:1", 1.0, replica="me")
    assert pred.pending == 10 and pred.dropped_pending == 20
    p.state.on_completed("r29", 1.0, replica="me", status=503, ttft_s=0.1, latency_s=0.2, output_tokens=5)
    p.state.on_completed("r28", 1.0, replica="me", status=200, ttft_s=0.0, latency_s=0.2, output_tokens=5)
    p.state.on_completed("r27", 1.0, replica="other", status=200, ttft_s=0.1, latency_s=0.2, output_tokens=5)
    assert pred.samples == 0 and pred.pending == 8
    p.state.on_assigned(RequestInfo("late", "m", "m", prompt_tokens=10), "a:1", 100.0, replica="me")
    assert pred.pending == 1  # the rest outlived the TTL


def decide(profile, req, now=20.0):
    state = profile.state
    for addr, accel, running in (("a:1", "fast", 20), ("b:1", "slow", 20)):
        state.on_snapshot(snap(addr, accel, 0, running, ts=now), now)
    return profile.decide(req, now)


def test_cheapest_pod_meeting_the_slo_else_the_fastest():
    p = build_profile("predicted-latency", rng=random.Random(1))
    train(p)
    # slow pod: TTFT 3 x (15 + 10 + 80) = 315 ms, TPOT 3 x 14 = 42 ms; fast: 105 / 14 ms
    easy = RequestInfo("x1", "m", "m", prompt_tokens=200, slo_ttft_ms=1000, slo_tpot_ms=100)
    assert decide(p, easy).endpoints[0] == "b:1"  # the cheaper one meets it
    tight = RequestInfo("x2", "m", "m", prompt_tokens=200, slo_ttft_ms=200, slo_tpot_ms=100)
    assert decide(p, tight).endpoints[0] == "a:1"  # only the fast one does
    no_slo = RequestInfo("x3", "m", "m", prompt_tokens=200, expected_output_tokens=50)
    p2 = build_profile("predicted-latency", config=_no_defaults())
    train(p2)
    assert decide(p2, no_slo).endpoints[0] == "a:1"  # no SLO: lowest predicted latency


def test_prefer_headroom_takes_the_fastest_pod_meeting_the_slo():
    p = build_profile("predicted-latency-fast", rng=random.Random(1))
    train(p)
    easy = RequestInfo("x1", "m", "m", prompt_tokens=200, slo_ttft_ms=1000, slo_tpot_ms=100)
    assert decide(p, easy).endpoints[0] == "a:1"  # both meet it; the cheaper one is not preferred


def test_no_trust_beyond_the_batch_sizes_seen():
    """A model trained on batches of 0-30 does not vouch for a pod running 100 (the herd guard)."""
    p = build_profile("predicted-latency", rng=random.Random(1))
    train(p)
    pred = predictor_of(p)
    assert pred.frontier["slow"] == pytest.approx(3.0, abs=0.11)  # tens of requests
    state = p.state
    state.on_snapshot(snap("a:1", "fast", 0, 20, ts=20.0), 20.0)
    state.on_snapshot(snap("b:1", "slow", 0, 100, ts=20.0), 20.0)
    group = [state.endpoint_state("a:1"), state.endpoint_state("b:1")]
    out = pred.predict(group, [200, 200])
    assert out.trusted == [True, False]
    # the slow pod is cheaper and its extrapolated TTFT / TPOT (~1.3 s / ~0.1 s) fit this SLO
    loose = RequestInfo("x", "m", "m", prompt_tokens=200, slo_ttft_ms=5000, slo_tpot_ms=1000)
    assert p.decide(loose, 20.0).endpoints[0] == "a:1"
    # an accelerator with no model of its own is not trusted either (the pooled one answers)
    state.on_snapshot(snap("c:1", "fast", 0, 0, ts=20.0), 20.0)
    fresh = LatencyPredictor(min_samples=1)
    fresh.pooled = pred.pooled
    assert fresh.predict([state.endpoint_state("c:1")], [10]).trusted == [False]


def _no_defaults():
    return {
        "version": 2,
        "plugins": [{"name": "s", "type": "slo-latency"}],
        "schedulingProfiles": [{"name": "predicted-latency", "plugins": [{"pluginRef": "s"}]}],
    }


def test_nobody_meets_it_sheddable_rejected_others_served_and_counted():
    p = build_profile("predicted-latency", rng=random.Random(1))
    train(p)
    pred = predictor_of(p)
    hopeless = dict(prompt_tokens=200, slo_ttft_ms=20, slo_tpot_ms=5)
    d = decide(p, RequestInfo("s", "m", "m", criticality="Sheddable", **hopeless))
    assert d.status == 429 and d.endpoints == []
    assert "TTFT 20 ms, TPOT 5 ms" in d.reason and pred.rejected == 1
    d = decide(p, RequestInfo("c", "m", "m", criticality="Standard", **hopeless))
    assert d.ok and d.endpoints[0] == "a:1" and pred.predicted_violations == 1  # least TTFT
    # TPOT 5 ms is lost everywhere. With the fast pod busy (running 30: TTFT 145 ms, TPOT
    # 17 ms) and the slow one idle (75 ms, 24 ms), ranking by both objectives would pick the
    # fast pod (the least TPOT miss); the hopeless objective is dropped instead, and the
    # most headroom on TTFT wins: the idle pod
    state = p.state
    state.on_snapshot(snap("a:1", "fast", 0, 30, ts=20.0), 20.0)
    state.on_snapshot(snap("b:1", "slow", 0, 0, ts=20.0), 20.0)
    half = RequestInfo("h", "m", "m", prompt_tokens=200, slo_ttft_ms=400, slo_tpot_ms=5)
    assert p.decide(half, 20.0).endpoints[0] == "b:1" and pred.predicted_violations == 2


def test_a_saturated_pod_is_not_vouched_for():
    """Past the pool's queue threshold a pod's TTFT is set by departures: no prediction trusts it."""
    p = build_profile("predicted-latency", rng=random.Random(1))
    train(p)
    state = p.state
    # the model (trained without queues) predicts both within this SLO; the cheap pod is
    # queued beyond the threshold (5), so the other one serves, though it costs more
    loose = RequestInfo("x", "m", "m", prompt_tokens=200, slo_ttft_ms=5000, slo_tpot_ms=1000)
    state.on_snapshot(snap("a:1", "fast", waiting=0, running=10, ts=20.0), 20.0)
    state.on_snapshot(snap("b:1", "slow", waiting=9, running=10, ts=20.0), 20.0)
    assert p.decide(loose, 20.0).endpoints[0] == "a:1"
    state.on_snapshot(snap("b:1", "slow", waiting=0, running=10, ts=20.1), 20.1)
    assert p.decide(loose, 20.1).endpoints[0] == "b:1"  # queue gone: the cheaper one again


def test_defaults_per_objective_and_headers_win():
    sel = SloLatencySelector(default_ttft_ms=500, default_tpot_ms=50, objectives={"batch": (5000.0, 200.0)})
    assert sel.slo_of(RequestInfo("r", "m", "m")) == (500, 50)
    assert sel.slo_of(RequestInfo("r", "m", "m", objective="batch")) == (5000, 200)
    assert sel.slo_of(RequestInfo("r", "m", "m", objective="batch", slo_ttft_ms=100)) == (100, 200)
    assert sel.slo_of(RequestInfo("r", "m", "m", slo_ttft_ms=1, slo_tpot_ms=2)) == (1, 2)


def test_before_warm_up_nothing_is_rejected_and_the_least_loaded_wins():
    p = build_profile("predicted-latency", rng=random.Random(1))
    state = p.state
    state.on_snapshot(snap("a:1", "fast", waiting=3, ts=1.0), 1.0)
    state.on_snapshot(snap("b:1", "slow", waiting=0, ts=1.0), 1.0)
    d = p.decide(RequestInfo("s", "m", "m", criticality="Sheddable", slo_ttft_ms=1, slo_tpot_ms=1), 1.0)
    assert d.ok and d.endpoints[0] == "b:1"


@pytest.mark.parametrize(
    "params, field",
    [
        ({"shed": ["Critical"]}, "shed"),
        ({"margin": 2}, "margin"),
        ({"prefer": "speed"}, "prefer"),
        ({"objectives": {"x": {"ttft_ms": -1}}}, "objectives.x"),
        ({"objectives": [1]}, "objectives"),
        ({"nope": 1}, "nope"),
    ],
)
def test_bad_parameters_are_named(params, field):
    from picker.scheduling import ConfigError

    cfg = _no_defaults()
    cfg["plugins"][0]["parameters"] = params
    with pytest.raises(ConfigError, match=field):
        build_profile("predicted-latency", config=cfg)


def test_metrics_show_mape_samples_and_slo_outcomes():
    from prometheus_client import CollectorRegistry

    from picker.latency.metrics import register_latency_metrics

    p = build_profile("predicted-latency", rng=random.Random(1))
    reg = CollectorRegistry()
    register_latency_metrics(reg, "pool", p.state)
    train(p, n=100)
    p.state.on_snapshot(snap("a:1", "fast", ts=5.0), 5.0)
    req = RequestInfo("slo", "m", "m", prompt_tokens=100, slo_ttft_ms=10, slo_tpot_ms=100)
    p.state.on_assigned(req, "a:1", 5.0, replica="me")
    p.state.on_completed("slo", 5.0, replica="me", status=200, ttft_s=0.05, latency_s=0.5, output_tokens=10)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in reg.collect() for s in f.samples}
    assert got[("infergate_latency_training_samples_total", (("name", "pool"),))] == 101
    assert got[("infergate_latency_model_ready", (("name", "pool"),))] == 1
    mape = got[
        ("infergate_latency_prediction_mape", (("accelerator", "all"), ("kind", "ttft"), ("name", "pool")))
    ]
    assert 0 < mape < 1
    key = ("infergate_slo_requests_total", (("name", "pool"), ("objective", "ttft"), ("outcome", "missed")))
    assert got[key] == 1
    key = ("infergate_slo_requests_total", (("name", "pool"), ("objective", "tpot"), ("outcome", "met")))
    assert got[key] == 1
    empty = CollectorRegistry()
    register_latency_metrics(empty, "pool", build_profile("gie-v1").state)
    assert not list(empty.collect())  # a profile without a predictor shows nothing


def test_slo_headers_parse():
    from picker.latency.headers import parse_slo_headers

    assert parse_slo_headers(None, "") == (0.0, 0.0)
    assert parse_slo_headers("500", "50.5") == (500.0, 50.5)
    for bad in ("abc", "-1", "0", "nan", "inf", "1e12"):
        with pytest.raises(ValueError, match="x-slo-ttft-ms"):
            parse_slo_headers(bad, None)


def test_work_coefficients_never_turn_negative():
    """A lull must not teach 'more work ahead is faster' (it would extrapolate into an overload)."""
    m = OnlineRegression(2, nonneg=(1,))
    for i in range(100):  # noise that an unconstrained fit would read as a negative slope
        m.update([1.0, i * 0.01], 50.0 - 0.5 * i * 0.01)
    assert m.w[1] == 0.0 and m.w[0] == pytest.approx(50.0, abs=1.0)
