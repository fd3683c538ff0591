"""Model resolution: weighted splits, the rewrite header, objectives, and the unknown-model policy."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from picker.models import ModelTable, UnknownModel
from shared.crds import InferenceModel, TargetModel


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
