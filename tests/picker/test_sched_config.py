"""The YAML profile loader: the built-in file, custom files, and errors that name the field.

Version 2 (plugins declared once, profiles referring to them) is the shape; version 1
(inline plugins) still loads, deprecated, and keeps its own field paths in errors.
"""

from __future__ import annotations

import random

import pytest
from sched_helpers import NOW, build, req, views

from picker.scheduling import BUILTIN_CONFIG, ConfigError, load_config
from picker.scheduling.framework import ProfileScheduler


def test_builtin_config_ships_every_profile():
    expected = {"default", "default-spread", "gie-v0", "gie-v1", "random", "round-robin"}
    assert set(load_config().names()) >= expected
    assert BUILTIN_CONFIG.exists()
    for name in load_config().names():
        s = build(name, rng=random.Random(0))
        assert isinstance(s.scheduler, ProfileScheduler) and s.name == s.scheduler.name == name


def test_gie_v1_profile_has_the_upstream_weights():
    s = build("gie-v1")
    weights = {sc.type_name: w for sc, w in s.selector.scorers}
    assert weights == {"queue": 2.0, "kv-cache": 2.0, "prefix-cache": 3.0}


def test_custom_yaml_file(tmp_path):
    path = tmp_path / "sched.yaml"
    path.write_text(
        """
version: 2
plugins:
  - {name: kv, type: kv-cache, parameters: {include_inflight: false}}
  - {type: max-score}
schedulingProfiles:
  - name: kv-only
    plugins:
      - {pluginRef: kv, weight: 1}
      - {pluginRef: max-score}
    fallbacks: 1
    shed: []
"""
    )
    s = build("kv-only", config=path, rng=random.Random(3))
    vs = views({"kv_usage": 0.9, "waiting": 50}, {"kv_usage": 0.2}, {"kv_usage": 0.5})
    d = s.schedule(req(criticality="Sheddable"), vs, NOW)
    assert d.endpoints == [vs[1].address, vs[2].address]
    assert build("kv-only", config=str(path)).name == "kv-only"


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        ({"scorers": [{"type": "quue", "weight": 1}]}, "profiles.p.scorers[0].type"),
        ({"scorers": [{"type": "queue", "weight": -1}]}, "profiles.p.scorers[0].weight"),
        ({"scorers": [{"type": "queue"}]}, "profiles.p.scorers[0].weight"),
        (
            {"scorers": [{"type": "queue", "weight": 1, "include_inflite": True}]},
            "profiles.p.scorers[0].include_inflite",
        ),
        ({"scorers": [{"type": "expected-work", "weight": 1, "floor": "x"}]}, "profiles.p.scorers[0].floor"),
        ({"scorers": {"type": "queue"}}, "profiles.p.scorers"),
        ({"picker": {"type": "best"}}, "profiles.p.picker.type"),
        ({"filters": [{"type": "low-queue", "threshold": 1.5}]}, "profiles.p.filters[0].threshold"),
        ({"saturation": {"kv_threshold": 1.5}}, "profiles.p.saturation.kv_threshold"),
        ({"saturation": {"staleness": 200}}, "profiles.p.saturation.staleness"),
        ({"shed": ["Sheddable", "Urgent"]}, "profiles.p.shed[1]"),
        ({"shed": ["Critical"]}, "profiles.p.shed"),
        ({"fallbacks": -1}, "profiles.p.fallbacks"),
        ({"fallbacks": True}, "profiles.p.fallbacks"),
        ({"type": "neural"}, "profiles.p.type"),
        ({"type": "decision-tree", "scorers": []}, "profiles.p.scorers"),
        (
            {"type": "decision-tree", "tree": {"lora_affinity_probability": 2}},
            "profiles.p.tree.lora_affinity_probability",
        ),
        ({"tree": {}}, "profiles.p.tree"),
        ({"inflight": {"ttl_s": 0}}, "profiles.p.inflight.ttl_s"),
        ({"prefix": {"default_capacity_blocks": 0}}, "profiles.p.prefix.default_capacity_blocks"),
        ({"weights": {}}, "profiles.p.weights"),
        ("not a mapping", "profiles.p"),
    ],
)
def test_version_1_errors_name_the_field(profile, field):
    with pytest.raises(ConfigError) as err:
        load_config({"version": 1, "profiles": {"p": profile}})
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_top_level_errors():
    with pytest.raises(ConfigError, match=r"^profiles:"):
        load_config({"version": 1})
    with pytest.raises(ConfigError, match=r"^version:"):
        load_config({"version": 3, "schedulingProfiles": [{"name": "p"}]})
    with pytest.raises(ConfigError, match=r"^profiles: the version-1 shape"):
        load_config({"version": 2, "profiles": {"p": {}}})
    with pytest.raises(ConfigError, match=r"^schedulingProfiles:"):
        load_config({"version": 2, "plugins": []})
    with pytest.raises(ConfigError, match=r"^profile:"):
        build("zzz", config={"profiles": {"p": {}}})
    with pytest.raises(ConfigError, match=r"^extra:"):
        load_config({"profiles": {"p": {}}, "extra": 1})


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'fastest'.*default"):
        build("fastest")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_each_scheduler_has_its_own_state():
    a, b = build("default"), build("default")
    assert a.inflight is not b.inflight and a.prefix is not b.prefix
