"""Model resolution: weighted splits, the rewrite header, objectives, and the unknown-model policy."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from picker.config import PickerConfig
from picker.models import CRITICALITY_PRIORITY, ModelTable, UnknownModel, criticality_of
from picker.sources import KubeSource
from shared.crds import (
    InferenceModel,
    InferenceModelRewrite,
    InferenceObjective,
    RewriteRule,
    RewriteTarget,
    TargetModel,
)
from tests.support.waiting import wait_until


def im(name, model, crit="Standard", targets=(), pool="pool"):
    return InferenceModel(name, "default", model, pool, crit, tuple(targets))


def test_weighted_split_follows_the_weights():
    t = ModelTable(
        [im("a", "a", targets=[TargetModel("x", 80), TargetModel("y", 20)])], "pool", rng=random.Random(7)
    )
    counts = Counter(t.resolve("a").target for _ in range(5000))
    assert 0.75 < counts["x"] / 5000 < 0.85
    assert set(counts) == {"x", "y"}


def test_unweighted_split_is_equal():
    t = ModelTable(
        [im("a", "a", targets=[TargetModel("x"), TargetModel("y"), TargetModel("z")])],
        "pool",
        rng=random.Random(1),
    )
    counts = Counter(t.resolve("a").target for _ in range(6000))
    assert all(1700 < c < 2300 for c in counts.values())


def test_no_targets_means_the_model_itself():
    t = ModelTable([im("a", "llama", "Critical")], "pool")
    r = t.resolve("llama")
    assert (r.target, r.criticality, r.known) == ("llama", "Critical", True)


def test_rewrite_header_overrides_the_split_and_is_never_unknown():
    t = ModelTable([im("a", "a", "Critical", [TargetModel("x")])], "pool", "reject")
    assert t.resolve("a", rewrite="lora-9").target == "lora-9"
    assert t.resolve("a", rewrite="lora-9").criticality == "Critical"
    assert t.resolve("who", rewrite="lora-9").target == "lora-9"


def test_objective_sets_the_criticality():
    t = ModelTable([im("a", "a", "Standard"), im("batch", "batch-model", "Sheddable")], "pool")
    assert t.resolve("a", objective="batch").criticality == "Sheddable"
    assert t.resolve("a", objective="batch-model").criticality == "Sheddable"
    assert t.resolve("a", objective="missing").criticality == "Standard"


def test_unknown_model_policy():
    assert ModelTable([], "pool", "sheddable").resolve("zz").criticality == "Sheddable"
    assert ModelTable([], "pool", "sheddable").resolve("zz").target == "zz"
    with pytest.raises(UnknownModel):
        ModelTable([], "pool", "reject").resolve("zz")
    with pytest.raises(ValueError):
        ModelTable([], "pool", "maybe")


def test_models_of_other_pools_are_ignored():
    t = ModelTable([im("a", "a", pool="other")], "pool", "reject")
    with pytest.raises(UnknownModel):
        t.resolve("a")


# -- InferenceObjective, InferenceModelRewrite and the InferenceModel mapping -------------------


def objective(name, priority, pool="pool"):
    return InferenceObjective(name, "default", priority, (pool,))


def rewrite(name, *rules, created=None, pool="pool"):
    return InferenceModelRewrite(name, "default", pool, tuple(rules), created=created)


def rule(matches=(), *targets):
    return RewriteRule(
        tuple(matches),
        tuple(RewriteTarget(*t) if isinstance(t, tuple) else RewriteTarget(t) for t in targets),
    )


def test_criticality_follows_priority():
    assert [criticality_of(p) for p in (7, 0, -1)] == ["Critical", "Standard", "Sheddable"]
    assert CRITICALITY_PRIORITY == {"Critical": 100, "Standard": 0, "Sheddable": -100}


def test_objective_header_sets_priority_by_name():
    t = ModelTable([objective("premium", 10), objective("batch", -5), objective("plain", None)], "pool")
    r = t.resolve("m", objective="premium")
    assert (r.priority, r.criticality, r.objective, r.target, r.known) == (
        10,
        "Critical",
        "premium",
        "m",
        False,
    )
    assert (t.resolve("m", objective="batch").criticality, t.resolve("m", objective="batch").priority) == (
        "Sheddable",
        -5,
    )
    assert t.resolve("m", objective="plain").priority == 0
    missing = t.resolve("m", objective="nope")
    assert (missing.priority, missing.objective, missing.criticality) == (0, None, "Standard")


def test_unknown_models_default_to_priority_zero_routed_never_shed():
    r = ModelTable([], "pool").resolve("zz")
    assert (r.target, r.priority, r.criticality, r.known, r.objective) == ("zz", 0, "Standard", False, None)
    legacy = ModelTable([], "pool", "sheddable").resolve("zz")
    assert (legacy.priority, legacy.criticality) == (-100, "Sheddable")
    # An objective header still applies to an unknown model under the legacy policy.
    assert ModelTable([objective("p", 3)], "pool", "sheddable").resolve("zz", objective="p").priority == 3


def test_inference_model_maps_to_priority_and_a_rewrite_rule():
    t = ModelTable(
        [
            im("chat", "chat", "Critical", [TargetModel("v1", 3), TargetModel("v2", 1)]),
            im("eval", "batch-eval", "Sheddable"),
            im("std", "summarize"),
        ],
        "pool",
        rng=random.Random(3),
    )
    r = t.resolve("chat")
    assert (r.priority, r.criticality, r.objective, r.known) == (100, "Critical", "chat", True)
    assert r.target in {"v1", "v2"}
    e = t.resolve("batch-eval")
    assert (e.priority, e.criticality, e.target, e.objective) == (-100, "Sheddable", "batch-eval", "eval")
    assert t.resolve("summarize").priority == 0
    # The objective header still accepts an InferenceModel's name or modelName.
    assert t.resolve("summarize", objective="chat").priority == 100
    assert t.resolve("summarize", objective="batch-eval").objective == "eval"
    assert t.client_names() == ["batch-eval", "chat", "summarize"]


def test_an_inference_objective_beats_an_inference_model_of_the_same_name():
    t = ModelTable([im("chat", "chat", "Critical"), objective("chat", -1)], "pool")
    assert t.resolve("x", objective="chat").priority == -1
    # Without a header, the requested model's InferenceModel gives the default priority.
    assert t.resolve("chat").priority == 100


def test_rewrite_weighted_split_follows_the_weights():
    t = ModelTable([rewrite("r", rule(["chat"], ("a", 900), ("b", 100)))], "pool", rng=random.Random(11))
    counts = Counter(t.resolve("chat").target for _ in range(5000))
    assert 0.87 < counts["a"] / 5000 < 0.93 and set(counts) == {"a", "b"}
    r = t.resolve("chat")
    assert (r.known, r.priority, r.objective) == (True, 0, None)


def test_rewrite_precedence_exact_then_oldest_then_first_rule():
    old = rewrite(
        "zzz-old",
        rule([], "generic-old"),
        rule(["chat"], "old-first"),
        rule(["chat"], "old-second"),
        created=100.0,
    )
    new = rewrite("aaa-new", rule(["chat", "code"], "new"), rule([], "generic-new"), created=200.0)
    t = ModelTable([new, old], "pool")
    assert t.resolve("chat").target == "old-first"  # oldest resource, then its first matching rule
    assert t.resolve("code").target == "new"  # an Exact rule beats the older generic rule
    assert t.resolve("other").target == "generic-old"  # no Exact rule: the oldest generic rule
    assert t.resolve("other").known
    # No timestamps (files): by name, for a stable result.
    a, b = rewrite("a", rule(["m"], "from-a")), rewrite("b", rule(["m"], "from-b"))
    assert ModelTable([b, a], "pool").resolve("m").target == "from-a"
    # A timestamped resource is older than one without (a file loaded next to a cluster export).
    assert (
        ModelTable([a, rewrite("z", rule(["m"], "from-z"), created=1.0)], "pool").resolve("m").target
        == "from-z"
    )


def test_a_rule_without_targets_keeps_the_model_and_a_generic_rule_makes_nothing_unknown():
    t = ModelTable([rewrite("r", rule(["keep"]), rule([], "fallback"))], "pool", "reject")
    assert t.resolve("keep").target == "keep"
    assert t.resolve("anything").target == "fallback"  # never 404: the generic rule matches it
    assert t.client_names() == ["keep"]


def test_rewrite_and_inference_model_on_the_same_model_the_newer_api_decides_the_target():
    t = ModelTable(
        [im("chat", "chat", "Critical", [TargetModel("old-lora")]), rewrite("r", rule(["chat"], "new-lora"))],
        "pool",
    )
    r = t.resolve("chat")
    assert (r.target, r.priority) == ("new-lora", 100)  # the target from the rewrite, priority from the model
    assert t.overridden == ["chat"]
    # An InferenceModel (an exact name) still beats a generic rewrite rule.
    t2 = ModelTable(
        [im("chat", "chat", targets=[TargetModel("lora")]), rewrite("r", rule([], "base"))], "pool"
    )
    assert (t2.resolve("chat").target, t2.resolve("other").target) == ("lora", "base")


def test_rewrite_header_overrides_every_rule():
    t = ModelTable([rewrite("r", rule(["chat"], "x"))], "pool", "reject")
    assert t.resolve("chat", rewrite="lora-9").target == "lora-9"
    assert t.resolve("who", rewrite="lora-9").target == "lora-9"


def test_the_oldest_inference_model_keeps_a_shared_model_name():
    young = InferenceModel("young", "default", "chat", "pool", "Sheddable", (), created=200.0)
    old = InferenceModel("old", "default", "chat", "pool", "Critical", (), created=100.0)
    assert ModelTable([young, old], "pool").resolve("chat").objective == "old"


def test_other_pools_and_namespaces_are_ignored():
    resources = [
        rewrite("r", rule(["a"], "x"), pool="other"),
        objective("o", 5, pool="other"),
        InferenceObjective("far", "elsewhere", 5, ("pool",)),
    ]
    t = ModelTable(resources, "pool", "reject", namespace="default")
    with pytest.raises(UnknownModel):
        t.resolve("a")
    assert t.resolve("a", rewrite="y", objective="o").priority == 0
    assert t.resolve("a", rewrite="y", objective="far").priority == 0


def test_from_resources_uses_the_pool_labels_for_llmd_pool_selectors():
    from shared import crds

    docs = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool, labels: {tier: gold}}
spec: {selector: {matchLabels: {app: vllm}}, targetPorts: [{number: 8000}]}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: gold}
spec: {priority: 4, poolSelector: {matchLabels: {tier: gold}}}
"""
    t = ModelTable.from_resources(crds.load_yaml(docs), "pool", namespace="default")
    assert t.resolve("m", objective="gold").priority == 4
    assert (
        ModelTable.from_resources(crds.load_yaml(docs), "other").resolve("m", objective="gold").priority == 0
    )


def test_deprecation_is_logged_once_per_load(caplog):
    with caplog.at_level("WARNING", logger="picker.models"):
        t = ModelTable([im("a", "a"), im("b", "b")], "pool")
        for _ in range(10):
            t.resolve("a")
    assert [r.getMessage() for r in caplog.records].count(
        "InferenceModel is deprecated upstream: use InferenceObjective and InferenceModelRewrite"
    ) == 1


def test_the_examples_load_together():
    from pathlib import Path

    from shared import crds

    examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    t = ModelTable.from_resources(crds.load_files([examples]), "vllm-llama2-7b", namespace="default")
    assert "chat" in t.client_names()
    assert t.resolve("chat").target in {"chat-lora-v1", "chat-lora-v2"}
    assert t.resolve("chat").criticality == "Critical"


# -- the Kubernetes watch of every kind --------------------------------------------------------


async def test_kube_source_watches_objectives_rewrites_and_models_in_both_groups(kube_api):
    def obj(api, kind, name, spec, **meta):
        return {
            "apiVersion": api,
            "kind": kind,
            "metadata": {"name": name, "namespace": "default", **meta},
            "spec": spec,
        }

    gie, llmd = "inference.networking.x-k8s.io/v1alpha2", "llm-d.ai/v1alpha2"
    await kube_api.upsert(
        obj(gie, "InferenceObjective", "premium", {"priority": 7, "poolRef": {"name": "pool"}})
    )
    await kube_api.upsert(
        obj(
            llmd,
            "InferenceModelRewrite",
            "canary",
            {
                "poolRef": {"name": "pool"},
                "rules": [
                    {"matches": [{"model": {"value": "chat"}}], "targets": [{"modelRewrite": "chat-v2"}]}
                ],
            },
        )
    )
    await kube_api.upsert(
        obj(
            gie,
            "InferenceModel",
            "legacy",
            {"modelName": "old", "criticality": "Sheddable", "poolRef": {"name": "pool"}},
        )
    )
    await kube_api.upsert(
        obj(
            "inference.networking.k8s.io/v1",
            "InferencePool",
            "pool",
            {
                "selector": {"matchLabels": {"app": "vllm"}},
                "targetPorts": [{"number": 8000}, {"number": 8001}],
            },
        )
    )
    tables: list[ModelTable] = []
    source = KubeSource(PickerConfig(pool_name="pool", kube_host=kube_api.url), tables.append)
    task = asyncio.create_task(source.run())
    try:
        await wait_until(lambda: source.loaded, 10, "config synced")
        await wait_until(lambda: tables and tables[-1].client_names() == ["chat", "old"], 10, "all kinds")
        # Readiness needs one synced pool collection, not the pool itself: the v1alpha2
        # collection may sync (empty) before the v1 pool's event arrives.
        await wait_until(lambda: source.pool is not None, 10, "pool seen")
        t = tables[-1]
        assert t.resolve("chat").target == "chat-v2"
        assert t.resolve("chat", objective="premium").priority == 7
        assert t.resolve("old").criticality == "Sheddable"
        assert source.pool.target_ports == (8000, 8001)
        await kube_api.upsert(
            obj(llmd, "InferenceObjective", "batch", {"priority": -3, "poolRef": {"name": "pool"}})
        )
        await kube_api.delete(obj(llmd, "InferenceModelRewrite", "canary", {}))
        await wait_until(
            lambda: "batch" in tables[-1].objectives and "chat" not in tables[-1].client_names(), 10, "watch"
        )
        assert tables[-1].resolve("chat").target == "chat"
        # An invalid object is ignored with an error count; the others keep working.
        await kube_api.upsert(
            obj(gie, "InferenceObjective", "broken", {"priority": "high", "poolRef": {"name": "pool"}})
        )
        await wait_until(lambda: source.errors >= 1, 10, "invalid object noticed")
        assert tables[-1].resolve("m", objective="batch").priority == -3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
