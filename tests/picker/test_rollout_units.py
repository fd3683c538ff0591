"""Progressive rollout, no I/O: the annotations, the statistics, the decision, and the controller
over an in-memory KV with a hand-driven clock (several replicas sharing one record)."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from picker.models import ModelTable
from picker.rollout import state as rs
from picker.rollout.controller import RolloutController
from picker.rollout.spec import RolloutSettings
from picker.rollout.stats import CompletionStats, Summary
from shared import crds
from shared.kvstore import MemoryKv
from shared.schemas import Completion, EventBatch, encode

REWRITE = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata:
  name: chat-rollout
  annotations:
    infergate.io/rollout: "true"
    infergate.io/rollout-steps: "10,50,100"
    infergate.io/rollout-hold: "{hold}"
    infergate.io/rollout-min-requests: "5"
    infergate.io/rollout-min-errors: "2"
spec:
  poolRef: {{name: pool}}
  rules:
    - matches: [{{model: {{type: Exact, value: chat}}}}]
      targets: [{{modelRewrite: chat-v1, weight: 50}}, {{modelRewrite: chat-v2, weight: 50}}]
"""


def table(hold: float = 10, text: str = REWRITE) -> ModelTable:
    return ModelTable(crds.load_yaml(text.format(hold=hold)), "pool", rng=random.Random(1))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def completions(target: str, n: int, ts: float, status: int = 200, latency: float = 0.5) -> bytes:
    evs = [
        Completion(request_id=f"{target}-{ts}-{i}", replica="r", address="a", target_model=target,
                   status=status, latency_s=latency, ttft_s=latency / 10, output_tokens=50, ts=ts)
        for i in range(n)
    ]  # fmt: skip
    return encode(EventBatch(replica="r", events=evs, ts=ts))


def picks(t: ModelTable, n: int = 2000) -> float:
    return sum(t.resolve("chat").target == "chat-v2" for _ in range(n)) / n


def test_annotations_mark_the_rule_and_weights_start_on_the_stable_model() -> None:
    t = table()
    c = RolloutController("default", "pool", "r1", CollectorRegistry())
    c.apply(t)
    assert [(r.model, r.stable, r.canary, r.settings.steps) for r in c.rollouts] == [
        ("chat", "chat-v1", "chat-v2", (10, 50, 100))
    ]
    assert picks(t) == 0.0  # no state read yet: everything on the stable model
    unmarked = table(text=REWRITE.replace('infergate.io/rollout: "true"', 'infergate.io/other: "x"'))
    c.apply(unmarked)
    assert c.rollouts == [] and 0.4 < picks(unmarked) < 0.6  # the resource's own weights


def test_invalid_annotation_disables_only_the_rollout() -> None:
    t = table(text=REWRITE.replace('"10,50,100"', '"50,10"'))
    c = RolloutController("default", "pool", "r1", CollectorRegistry())
    c.apply(t)
    assert c.rollouts == [] and 0.4 < picks(t) < 0.6


def test_decide_rolls_back_on_errors_and_latency_and_advances_when_held() -> None:
    s = RolloutSettings(steps=(10, 50, 100), hold_s=10, min_requests=5, min_errors=2)
    st = rs.initial("v1", "v2", s, 0.0, "me")
    good = Summary(count=50, errors=0, p90_ttft=0.05, p90_ntpot=0.01)
    assert rs.decide(st, s, Summary(count=5, p90_ttft=0.05, p90_ntpot=0.01), good, 5.0, "me") is None  # held
    assert rs.decide(st, s, Summary(count=4, p90_ttft=0.05, p90_ntpot=0.01), good, 11.0, "me") is None  # few
    d = rs.decide(st, s, Summary(count=5, p90_ttft=0.05, p90_ntpot=0.01), good, 11.0, "me")
    assert d.kind == "advance" and d.state.weight == 50 and d.state.since == 11.0
    d = rs.decide(st, s, Summary(count=3, errors=2), good, 1.0, "me")
    assert d.kind == "rollback" and d.state.weight == 0 and "error rate" in d.state.reason
    slow = Summary(count=20, p90_ttft=0.2, p90_ntpot=0.01)
    assert rs.decide(st, s, slow, good, 1.0, "me").kind == "rollback"
    slow_tokens = Summary(count=20, p90_ttft=0.05, p90_ntpot=0.05)
    assert "NTPOT" in rs.decide(st, s, slow_tokens, good, 1.0, "me").state.reason
    last = rs.RolloutState(stable="v1", canary="v2", step=1, weight=50, since=0.0)
    d = rs.decide(last, s, Summary(count=5), Summary(count=5), 11.0, "me")
    assert d.kind == "complete" and d.state.weight == 100 and d.state.phase == rs.COMPLETE
    assert rs.decide(d.state, s, Summary(count=9, errors=9), good, 99.0, "me") is None  # done is done


def test_stats_keep_only_tracked_models_and_compute_p90() -> None:
    s = CompletionStats()
    s.track({"a"})
    for i in range(10):
        s.add("a", 200, latency_s=1.0 + i, ttft_s=0.1 * (i + 1), output_tokens=10, ts=100.0 + i)
    s.add("a", 500, 0.1, 0.0, 0, 105.0)
    s.add("client-chosen-name", 200, 1.0, 0.1, 1, 100.0)
    assert set(s.models) == {"a"}
    summ = s.summary("a", since=100.0)
    assert summ.count == 11 and summ.errors == 1
    assert summ.p90_ttft == pytest.approx(0.9) and summ.p90_ntpot == pytest.approx(0.9)
    assert s.summary("a", since=105.0).count == 6


async def test_two_replicas_share_one_record_and_a_regression_rolls_back_at_once() -> None:
    kv, clock = MemoryKv(), Clock()
    ta, tb = table(), table()
    a = RolloutController("default", "pool", "ra", CollectorRegistry(), clock=clock)
    b = RolloutController("default", "pool", "rb", CollectorRegistry(), clock=clock)
    for c, t in ((a, ta), (b, tb)):
        c.kv = kv
        c.apply(t)
    await a.tick()
    await b.tick()
    assert a.states[a.rollouts[0].id].weight == b.states[b.rollouts[0].id].weight == 10
    assert len(kv.data) == 1  # one record, started once
    assert 0.05 < picks(tb) < 0.15
    # healthy canary, step held: one of them advances, the other adopts it
    clock.t += 11
    for c in (a, b):
        c.on_events("s", completions("chat-v1", 40, clock.t - 1))
        c.on_events("s", completions("chat-v2", 6, clock.t - 1))
    await a.tick()
    await b.tick()
    assert a.states[a.rollouts[0].id].weight == b.states[b.rollouts[0].id].weight == 50
    adv = a.metrics.transitions.labels("chat", "advance")._value.get()
    adv += b.metrics.transitions.labels("chat", "advance")._value.get()
    assert adv == 1
    # the canary fails: back to 0 on the next tick, without waiting for the hold
    clock.t += 1
    for c in (a, b):
        c.on_events("s", completions("chat-v2", 3, clock.t, status=500))
    await b.tick()
    await a.tick()
    st = a.states[a.rollouts[0].id]
    assert st.weight == 0 and st.phase == rs.ROLLED_BACK
    assert picks(ta) == 0.0 and picks(tb) == 0.0
    # a replica that starts now (a restart) takes the shared state, not a fresh rollout
    c = RolloutController("default", "pool", "rc", CollectorRegistry(), clock=clock)
    c.kv = kv
    tc = table()
    c.apply(tc)
    await c.tick()
    assert c.states[c.rollouts[0].id].phase == rs.ROLLED_BACK and picks(tc) == 0.0


async def test_a_new_canary_restarts_the_rollout() -> None:
    kv, clock = MemoryKv(), Clock()
    c = RolloutController("default", "pool", "ra", CollectorRegistry(), clock=clock)
    c.kv = kv
    c.apply(table())
    await c.tick()
    clock.t += 1
    c.on_events("s", completions("chat-v2", 3, clock.t, status=500))
    await c.tick()
    assert c.states[c.rollouts[0].id].phase == rs.ROLLED_BACK
    c.apply(table(text=REWRITE.replace("chat-v2", "chat-v3")))
    await c.tick()
    st = c.states[c.rollouts[0].id]
    assert (st.canary, st.phase, st.weight) == ("chat-v3", rs.PROGRESSING, 10)
