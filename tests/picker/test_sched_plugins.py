"""The plugin framework: the open registry, plugins declared once, explicit data between plugins."""

from __future__ import annotations

import logging
import random
import textwrap

import pytest
from sched_helpers import NOW, build, req, sched, views

from picker.scheduling import ConfigError, load_config
from picker.scheduling.filters import Filter
from picker.scheduling.plugin import register, registered
from picker.scheduling.scorers import ExpectedWorkScorer, PrefixAffinityScorer, Scorer


@register("test-fewest-running")
class FewestRunning(Scorer):
    """A user's scorer: fewer running requests is better (min-max), a parameter to show params."""

    def __init__(self, cap: int = 1000) -> None:
        self.cap = cap

    def score(self, ctx, group):
        rs = [min(s.snap.running, self.cap) for s in group]
        hi, lo = max(rs), min(rs)
        return None if hi == lo else [(hi - r) / (hi - lo) for r in rs]

    @classmethod
    def from_params(cls, p):
        out = cls(cap=p.integer("cap", 1000, lo=1))
        p.done()
        return out


@register("test-needs-a")
class NeedsA(Scorer):
    consumes = frozenset({"test-a"})

    def score(self, ctx, group):
        return None


@register("test-makes-a-needs-b")
class MakesANeedsB(Scorer):
    produces = frozenset({"test-a"})
    consumes = frozenset({"test-b"})

    def score(self, ctx, group):
        return None


@register("test-makes-b-needs-a")
class MakesBNeedsA(Scorer):
    produces = frozenset({"test-b"})
    consumes = frozenset({"test-a"})

    def score(self, ctx, group):
        return None


@register("test-filter-needs-work")
class FilterNeedsWork(Filter):
    consumes = frozenset({"expected-work"})

    def filter(self, ctx, group):
        return group


def v2(plugins, *profiles, **top):
    return {"version": 2, "plugins": plugins, "schedulingProfiles": list(profiles), **top}


WORK = {"name": "work", "type": "expected-work"}
BONUS = {"name": "bonus", "type": "prefix-affinity"}


# -- errors name the field ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (v2([{"name": "x"}], {"name": "p"}), "plugins[0].type"),
        (v2([{"type": "quue"}], {"name": "p"}), "plugins[0].type"),
        (v2([{"type": "queue"}, {"type": "queue"}], {"name": "p"}), "plugins[1].name"),
        (v2([{"type": "queue", "parameters": [1]}], {"name": "p"}), "plugins[0].parameters"),
        (v2([{"type": "queue", "params": {}}], {"name": "p"}), "plugins[0].params"),
        (
            v2([{"type": "expected-work", "parameters": {"floor": "x"}}], {"name": "p"}),
            "plugins[0].parameters.floor",
        ),
        (
            v2([{"type": "queue", "parameters": {"include_inflite": True}}], {"name": "p"}),
            "plugins[0].parameters.include_inflite",
        ),
        (
            v2([], {"name": "p", "plugins": [{"pluginRef": "queue"}]}),
            "schedulingProfiles[0].plugins[0].pluginRef",
        ),
        (v2([], {"name": "p", "plugins": [{"weight": 1}]}), "schedulingProfiles[0].plugins[0].pluginRef"),
        (
            v2([{"type": "queue"}], {"name": "p", "plugins": [{"pluginRef": "queue"}]}),
            "schedulingProfiles[0].plugins[0].weight",
        ),
        (
            v2([{"type": "queue"}], {"name": "p", "plugins": [{"pluginRef": "queue", "weight": -1}]}),
            "schedulingProfiles[0].plugins[0].weight",
        ),
        (
            v2([{"type": "random"}], {"name": "p", "plugins": [{"pluginRef": "random", "weight": 1}]}),
            "schedulingProfiles[0].plugins[0].weight",
        ),
        (
            v2(
                [{"type": "random"}, {"type": "max-score"}],
                {"name": "p", "plugins": [{"pluginRef": "random"}, {"pluginRef": "max-score"}]},
            ),
            "schedulingProfiles[0].plugins[1]",
        ),
        (
            v2(
                [{"type": "decision-tree"}, {"type": "queue"}],
                {
                    "name": "p",
                    "plugins": [{"pluginRef": "decision-tree"}, {"pluginRef": "queue", "weight": 1}],
                },
            ),
            "schedulingProfiles[0].plugins[1]",
        ),
        (v2([], {"name": "p"}, {"name": "p"}), "schedulingProfiles[1].name"),
        (v2([], {"plugins": []}), "schedulingProfiles[0].name"),
        (v2([], {"name": "p", "extends": "q"}), "schedulingProfiles[0].extends"),
        (
            v2([], {"name": "p", "extends": "q"}, {"name": "q", "extends": "p"}),
            "schedulingProfiles[1].extends",
        ),
        (
            v2([], {"name": "p", "saturation": {"kv_threshold": 1.5}}),
            "schedulingProfiles[0].saturation.kv_threshold",
        ),
        (v2([], {"name": "p", "scorers": []}), "schedulingProfiles[0].scorers"),
        (v2([], {"name": "p", "shed": ["Critical"]}), "schedulingProfiles[0].shed"),
        (v2([], {"name": "p"}, pluginModules=["no_such_module_xyz"]), "pluginModules[0]"),
        (v2([], {"name": "p"}, pluginModules="mod"), "pluginModules"),
        (v2([], "p"), "schedulingProfiles[0]"),
    ],
)
def test_errors_name_the_field(config, field):
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_a_declared_plugin_is_validated_even_when_no_profile_uses_it():
    with pytest.raises(ConfigError, match=r"^plugins\[1\]\.parameters\.threshold:"):
        load_config(
            v2([{"type": "queue"}, {"type": "low-queue", "parameters": {"threshold": -1}}], {"name": "p"})
        )


# -- produces / consumes -------------------------------------------------------------------


def test_a_consumer_without_its_producer_is_refused_naming_both():
    cfg = v2([WORK, BONUS], {"name": "p", "plugins": [{"pluginRef": "bonus", "weight": 8}]})
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert err.value.field == "schedulingProfiles[0].plugins[0]"
    assert "'bonus' (prefix-affinity) consumes 'expected-work'" in err.value.problem
    assert "no plugin of profile 'p' produces" in err.value.problem
    assert "types that produce it: expected-work" in err.value.problem


def test_the_loader_runs_a_producer_before_its_consumer():
    listed_late = v2(
        [WORK, BONUS, {"type": "lora-affinity"}],
        {
            "name": "p",
            "plugins": [
                {"pluginRef": "bonus", "weight": 8},
                {"pluginRef": "lora-affinity", "weight": 6},
                {"pluginRef": "work", "weight": 4},
            ],
        },
    )
    s = build("p", listed_late)
    types = [type(sc) for sc, _ in s.selector.scorers]
    assert types.index(ExpectedWorkScorer) < types.index(PrefixAffinityScorer)
    # Only the consumer moved: the others keep their declared order.
    assert [sc.name for sc, _ in s.selector.scorers] == ["lora-affinity", "work", "bonus"]


def test_the_gate_really_reads_the_producers_scores():
    # Pod 0 holds the prefix but is the busiest: the load-gated bonus is 0 there, so the
    # idle pod 1 wins; a plain prefix bonus of the same weight would keep pod 0.
    cfg = v2(
        [WORK, BONUS, {"type": "prefix-cache"}],
        {
            "name": "gated",
            "plugins": [{"pluginRef": "work", "weight": 1}, {"pluginRef": "bonus", "weight": 3}],
        },
        {
            "name": "plain",
            "plugins": [{"pluginRef": "work", "weight": 1}, {"pluginRef": "prefix-cache", "weight": 3}],
        },
    )
    vs = views({"kv_usage": 0.7, "waiting": 3}, {"kv_usage": 0.05})
    out = {}
    for name in ("gated", "plain"):
        s = build(name, cfg, rng=random.Random(1))
        s.on_assigned(req("warm", prompt_tokens=64, prefix_hashes=[1, 2, 3, 4]), vs[0].address, NOW - 30)
        s.on_completed("warm", NOW - 20)
        out[name] = s.schedule(req(prompt_tokens=64, prefix_hashes=[1, 2, 3, 4]), vs, NOW).endpoints[0]
    assert out == {"gated": vs[1].address, "plain": vs[0].address}


def test_a_zero_weight_producer_still_runs_for_its_consumer():
    cfg = v2(
        [WORK, BONUS, {"type": "queue"}],
        {
            "name": "p",
            "plugins": [
                {"pluginRef": "work", "weight": 0},
                {"pluginRef": "bonus", "weight": 1},
                {"pluginRef": "queue", "weight": 0},
            ],
        },
    )
    s = build("p", cfg)
    assert [(sc.name, w) for sc, w in s.selector.scorers] == [("work", 0.0), ("bonus", 1.0)]


def test_two_producers_of_one_key_are_refused():
    cfg = v2(
        [WORK, {"name": "work2", "type": "expected-work"}],
        {"name": "p", "plugins": [{"pluginRef": "work", "weight": 1}, {"pluginRef": "work2", "weight": 1}]},
    )
    with pytest.raises(
        ConfigError, match=r"^schedulingProfiles\[0\]\.plugins\[1\]: 'work2' and 'work' both produce"
    ):
        load_config(cfg)


def test_a_producer_that_runs_later_is_refused():
    cfg = v2(
        [WORK, {"name": "f", "type": "test-filter-needs-work"}],
        {"name": "p", "plugins": [{"pluginRef": "f"}, {"pluginRef": "work", "weight": 1}]},
    )
    with pytest.raises(
        ConfigError, match=r"^schedulingProfiles\[0\]\.plugins\[0\]: .*a scorer, which runs after"
    ):
        load_config(cfg)


def test_a_dependency_cycle_is_refused():
    cfg = v2(
        [{"type": "test-makes-a-needs-b"}, {"type": "test-makes-b-needs-a"}],
        {
            "name": "p",
            "plugins": [
                {"pluginRef": "test-makes-a-needs-b", "weight": 1},
                {"pluginRef": "test-makes-b-needs-a", "weight": 1},
            ],
        },
    )
    with pytest.raises(
        ConfigError, match=r"^schedulingProfiles\[0\]\.plugins: the data dependencies form a cycle"
    ):
        load_config(cfg)
    cfg = v2(
        [{"type": "test-needs-a"}], {"name": "p", "plugins": [{"pluginRef": "test-needs-a", "weight": 1}]}
    )
    with pytest.raises(ConfigError, match="types that produce it: test-makes-a-needs-b"):
        load_config(cfg)


# -- the open registry -------------------------------------------------------------------


def test_a_users_plugin_is_registered_by_type_and_configured_by_name():
    assert "test-fewest-running" in registered()
    cfg = v2(
        [{"name": "calm", "type": "test-fewest-running", "parameters": {"cap": 500}}],
        {"name": "p", "plugins": [{"pluginRef": "calm", "weight": 1}]},
    )
    vs = views({"running": 40}, {"running": 3}, {"running": 90})
    d = build("p", cfg, rng=random.Random(0)).schedule(req(), vs, NOW)
    assert d.endpoints == [vs[1].address, vs[0].address, vs[2].address]
    bad = v2([{"type": "test-fewest-running", "parameters": {"cap": 0}}], {"name": "p"})
    with pytest.raises(ConfigError, match=r"^plugins\[0\]\.parameters\.cap:"):
        load_config(bad)


def test_registering_is_open_but_never_replaces_another_type():
    register("test-fewest-running")(FewestRunning)  # the same class again (a re-import): fine
    with pytest.raises(ValueError, match="already registered"):
        register("test-fewest-running", lambda p: FewestRunning())
    with pytest.raises(ValueError, match="already registered"):
        register("queue")(FewestRunning)

    def factory(p):
        return FewestRunning(cap=p.integer("cap", 7))

    register("test-fewest-running-fn", factory)
    s = build(
        "p",
        v2(
            [{"name": "f", "type": "test-fewest-running-fn"}],
            {"name": "p", "plugins": [{"pluginRef": "f", "weight": 1}]},
        ),
    )
    assert s.selector.scorers[0][0].cap == 7


def test_plugin_modules_are_imported_from_the_config(tmp_path, monkeypatch):
    (tmp_path / "my_sched_plugins.py").write_text(
        textwrap.dedent(
            """
            from picker.scheduling.plugin import register
            from picker.scheduling.scorers import Scorer

            @register("test-last-address")
            class LastAddress(Scorer):
                def score(self, ctx, group):
                    top = max(s.address for s in group)
                    return [1.0 if s.address == top else 0.0 for s in group]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = v2(
        [{"type": "test-last-address"}],
        {"name": "p", "plugins": [{"pluginRef": "test-last-address", "weight": 1}]},
        pluginModules=["my_sched_plugins"],
    )
    vs = views({}, {}, {})
    assert sched("p", config=cfg).schedule(req(), vs, NOW).endpoints[0] == vs[2].address


# -- profiles ------------------------------------------------------------------------------


def test_extends_inherits_and_overrides():
    cfg = v2(
        [WORK, {"type": "random"}],
        {
            "name": "base",
            "plugins": [{"pluginRef": "work", "weight": 4}],
            "saturation": {"queue_threshold": 9, "include_inflight": True},
            "fallbacks": 3,
            "max_candidates": 64,
        },
        {"name": "child", "extends": "base", "saturation": {"kv_threshold": 0.5}, "fallbacks": 1},
        {"name": "grandchild", "extends": "child", "plugins": [{"pluginRef": "random"}]},
    )
    child = build("child", cfg)
    th = child.thresholds
    assert (th.queue, th.kv, th.include_inflight) == (9, 0.5, True)  # merged key by key
    assert (child.fallbacks, child.max_candidates) == (1, 64)
    assert [sc.name for sc, _ in child.selector.scorers] == ["work"]
    grand = build("grandchild", cfg)
    assert grand.selector.scorers == [] and grand.selector.chooser.type_name == "random"
    assert grand.fallbacks == 1 and grand.thresholds.kv == 0.5


def test_builtin_default_spread_is_default_without_the_bonus():
    d, s = build("default"), build("default-spread")
    assert [sc.type_name for sc, _ in d.selector.scorers] == [
        "expected-work",
        "lora-affinity",
        "prefix-affinity",
    ]
    assert [sc.type_name for sc, _ in s.selector.scorers] == ["expected-work", "lora-affinity"]
    for attr in (
        "fallbacks",
        "max_candidates",
        "unsaturated_only",
        "shed",
        "default_output_tokens",
    ):
        assert getattr(d, attr) == getattr(s, attr)
    assert s.selector.chooser.peer_margin == d.selector.chooser.peer_margin == 0.8


# -- version 1, deprecated ---------------------------------------------------------------

V1_DEFAULT = {
    "version": 1,
    "profiles": {
        "default": {
            "scorers": [
                {"type": "expected-work", "weight": 4, "floor": 0.05, "prompt_weight": 2, "kv_weight": 0.5},
                {"type": "lora-affinity", "weight": 6},
                {"type": "prefix-affinity", "weight": 8},
            ],
            "filters": [{"type": "lora-affinity"}],
            "picker": {"type": "max-score", "peer_margin": 0.8},
            "saturation": {"include_inflight": True},
            "sheddable_unsaturated_only": True,
            "max_candidates": 256,
        }
    },
}
V2_DEFAULT = v2(
    [
        {
            "name": "w",
            "type": "expected-work",
            "parameters": {"floor": 0.05, "prompt_weight": 2, "kv_weight": 0.5},
        },
        {"name": "l", "type": "lora-affinity"},
        {"name": "b", "type": "prefix-affinity"},
        {"name": "lf", "type": "lora-affinity-filter"},
        {"name": "m", "type": "max-score", "parameters": {"peer_margin": 0.8}},
    ],
    {
        "name": "default",
        "plugins": [
            {"pluginRef": "lf"},
            {"pluginRef": "w", "weight": 4},
            {"pluginRef": "l", "weight": 6},
            {"pluginRef": "b", "weight": 8},
            {"pluginRef": "m"},
        ],
        "saturation": {"include_inflight": True},
        "sheddable_unsaturated_only": True,
        "max_candidates": 256,
    },
)


def test_version_1_and_version_2_make_the_same_decisions():
    rng = random.Random(5)
    specs = [
        {
            "waiting": rng.randint(0, 8),
            "kv_usage": rng.random() * 0.9,
            "lora": {"running": rng.sample(["a", "b", "c"], rng.randint(0, 2)), "max_lora": 2},
        }
        for _ in range(12)
    ]
    vs = views(*specs)
    a, b = sched("default", config=V1_DEFAULT, seed=3), sched("default", config=V2_DEFAULT, seed=3)
    for s in (a, b):
        s.set_peer_rank(1, 3, 0.7)
    for k in range(300):
        r = req(
            f"r{k}",
            model=rng.choice(["llama", "a", "b", "c"]),
            prompt_tokens=rng.randint(16, 600),
            prefix_hashes=[rng.randint(0, 5), rng.randint(0, 50)],
            criticality=rng.choice(["Critical", "Sheddable"]),
        )
        da, db = a.schedule(r, vs, NOW + k * 0.001), b.schedule(r, vs, NOW + k * 0.001)
        assert da == db
        if da.endpoints:
            for s in (a, b):
                s.on_assigned(r, da.endpoints[0], NOW + k * 0.001)


def test_version_1_logs_a_deprecation_once_per_source(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text("profiles:\n  p: {picker: {type: random}}\n")
    with caplog.at_level(logging.WARNING, logger="picker.scheduling"):
        build("p", path)
        build("p", path)
    warnings = [r for r in caplog.records if "deprecated version-1 shape" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()


def test_version_1_keeps_its_type_names_and_refuses_a_plugin_in_the_wrong_list():
    s = build("p", {"profiles": {"p": {"filters": [{"type": "lora-affinity"}]}}})
    assert s.selector.filters[0].type_name == "lora-affinity-filter"
    with pytest.raises(
        ConfigError, match=r"^profiles\.p\.filters\[0\]\.type: 'queue' is a scorer, not a filter"
    ):
        load_config({"profiles": {"p": {"filters": [{"type": "queue"}]}}})


def test_the_readme_example_config_loads():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).parents[2] / "picker" / "scheduling" / "README.md").read_text()
    section = readme[readme.index("## Config file") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = load_config(yaml.safe_load(block))
    assert cfg.names() == ["my-profile", "my-profile-no-bonus"]
    child = build("my-profile-no-bonus", cfg)
    assert child.thresholds.include_inflight and child.thresholds.kv == 0.8
    assert [sc.name for sc, _ in child.selector.scorers] == ["load", "lora"]
    assert child.selector.filters == []  # its plugins list replaced the parent's
    parent = build("my-profile", cfg)
    assert [f.name for f in parent.selector.filters] == ["gentle-queue"]
    assert [sc.name for sc, _ in parent.selector.scorers] == ["load", "lora", "bonus"]
