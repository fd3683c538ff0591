"""Adapter requests go only to servers whose /v1/models lists the adapter."""

from __future__ import annotations

import pytest

from tests.picker.sched_helpers import BASE, NOW, req, sched, views

SERVING_PROFILES = ["default", "gie-v0", "gie-v1", "default-spread"]


def pool():
    # pod-0 and pod-1 have "sql" loaded but idle (the metrics cannot tell); pod-2 does not;
    # pod-3's models are unknown (an older collector, or /v1/models unreachable).
    lora = {"running": [], "waiting": [], "max_lora": 4}
    return views(
        {"served_models": [BASE, "sql"], "lora": lora, "waiting": 3},
        {"served_models": [BASE, "sql"], "lora": lora, "waiting": 3},
        {"served_models": [BASE], "lora": lora},
        {"lora": lora, "waiting": 9},
    )


@pytest.mark.parametrize("profile", SERVING_PROFILES)
def test_adapter_requests_skip_servers_without_the_adapter(profile):
    s = sched(profile)
    chosen = set()
    for i in range(40):
        d = s.schedule(req(f"r{i}", model="sql", target_model="sql"), pool(), NOW)
        assert d.ok and "10.0.0.2:8000" not in d.endpoints, d  # never, not even as a fallback
        chosen.add(d.endpoints[0])
    assert chosen <= {"10.0.0.0:8000", "10.0.0.1:8000", "10.0.0.3:8000"}


@pytest.mark.parametrize("profile", SERVING_PROFILES)
def test_base_model_requests_use_every_server(profile):
    s = sched(profile)
    seen = {e for i in range(60) for e in s.schedule(req(f"r{i}"), pool(), NOW).endpoints}
    assert "10.0.0.2:8000" in seen


def test_an_unknown_model_list_counts_as_maybe_serving():
    d = sched("default").schedule(req(model="nobody-has-it", target_model="nobody-has-it"), pool(), NOW)
    assert d.endpoints == ["10.0.0.3:8000"]


def test_no_server_with_the_adapter_keeps_every_endpoint_and_lets_the_server_answer():
    known = pool()[:3]
    d = sched("default").schedule(req(model="nobody-has-it", target_model="nobody-has-it"), known, NOW)
    assert d.ok and len(d.endpoints) == 3


@pytest.mark.parametrize("profile", ["round-robin", "random"])
def test_baselines_know_nothing_of_adapters(profile):
    s = sched(profile)
    seen = {
        s.schedule(req(f"r{i}", model="sql", target_model="sql"), pool(), NOW).endpoints[0] for i in range(40)
    }
    assert "10.0.0.2:8000" in seen


def test_the_rule_can_be_switched_off_in_a_profile():
    config = {"version": 1, "profiles": {"p": {"picker": {"type": "random"}, "require_served_model": False}}}
    s = sched("p", config=config)
    seen = {
        s.schedule(req(f"r{i}", model="sql", target_model="sql"), pool(), NOW).endpoints[0] for i in range(40)
    }
    assert "10.0.0.2:8000" in seen
