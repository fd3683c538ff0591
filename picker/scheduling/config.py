"""Scheduling profiles from YAML: validation with field paths, and ``build_scheduler``.

The file shape (every field is optional unless said otherwise)::

    version: 1
    profiles:
      <name>:
        type: scoring | decision-tree          # default scoring
        filters:  [{type: <filter>, ...params}]          # scoring only
        scorers:  [{type: <scorer>, weight: <w>, ...params}]  # scoring only
        picker:   {type: max-score | random | round-robin}     # scoring only
        tree:     {queue_critical, kv_threshold, lora_queue_threshold,
                   lora_affinity_probability}              # decision-tree only
        saturation: {queue_threshold: 5, kv_threshold: 0.8, staleness_ms: 200,
                     include_inflight: false}
        shed: [Sheddable]                     # criticalities refused (429) when saturated
        sheddable_unsaturated_only: false     # route shed-able requests to unsaturated pods only
        require_served_model: true            # adapters only to pods whose /v1/models lists them
        fallbacks: 2
        inflight: {ttl_s: 60, propagation_ms: 20}
        prefix: {default_capacity_blocks: 8192}
        default_output_tokens: 200            # when a request gives no max_tokens
        max_candidates: 0                     # >0: score a random window of that many (+ holders)

Every profile is built once at load time, so a bad file fails at startup with the
path of the offending field (``profiles.default.scorers[1].weight: must be >= 0``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .api import CRITICALITIES
from .filters import FILTERS, Filter
from .framework import ProfileScheduler, ScoringSelector, _ErrorLog
from .inflight import InflightTracker
from .params import ConfigError, Params
from .pickers import PICKERS
from .prefix import DEFAULT_CAPACITY_BLOCKS, PrefixIndex
from .scorers import SCORERS, Scorer
from .state import Thresholds
from .tree import DecisionTreeSelector

__all__ = ["BUILTIN_CONFIG", "SchedulingConfig", "build_scheduler", "load_config"]

BUILTIN_CONFIG = Path(__file__).with_name("profiles.yaml")


@dataclass(frozen=True)
class SchedulingConfig:
    """A validated config: profile name -> its raw mapping (built anew per scheduler)."""

    profiles: dict[str, dict[str, Any]]
    source: str = "<dict>"

    def names(self) -> list[str]:
        return list(self.profiles)


def load_config(source: str | Path | dict[str, Any] | SchedulingConfig | None = None) -> SchedulingConfig:
    """Load and validate a config: a YAML file path, an already-parsed mapping, or the built-in one."""
    if isinstance(source, SchedulingConfig):
        return source
    if source is None:
        source = BUILTIN_CONFIG
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"invalid YAML: {exc}") from exc
        name = str(path)
    else:
        data, name = source, "<dict>"
    top = Params(data, "config")
    version = top.integer("version", 1)
    if version != 1:
        raise ConfigError("version", f"unsupported version {version} (this build reads 1)")
    profiles = top.raw("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise ConfigError("profiles", "must be a non-empty mapping of profile name -> profile")
    top.where = ""
    top.done()
    out: dict[str, dict[str, Any]] = {}
    for pname, raw in profiles.items():
        if not isinstance(pname, str) or not pname:
            raise ConfigError("profiles", f"profile names must be non-empty strings, got {pname!r}")
        _build(pname, raw, random.Random(0))  # validate now, fail at startup
        out[pname] = raw
    return SchedulingConfig(out, name)


def build_scheduler(
    profile_name: str,
    config: str | Path | dict[str, Any] | SchedulingConfig | None = None,
    rng: random.Random | None = None,
) -> ProfileScheduler:
    """A fresh scheduler for ``profile_name`` (its own in-flight and prefix state).

    Pass a seeded ``random.Random`` for reproducible decisions (the simulation does).
    """
    cfg = load_config(config)
    raw = cfg.profiles.get(profile_name)
    if raw is None:
        raise ConfigError(
            "profile", f"unknown profile {profile_name!r} (known: {', '.join(sorted(cfg.profiles))})"
        )
    return _build(profile_name, raw, rng or random.Random())


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(where, f"must be a list, got {type(value).__name__}")
    return value


def _plugin_type(p: Params, known: dict[str, Any], kind: str) -> Any:
    t = p.string("type") if p.has("type") else None
    if t is None:
        raise ConfigError(p.field("type"), f"missing {kind} type")
    cls = known.get(t)
    if cls is None:
        raise ConfigError(p.field("type"), f"unknown {kind} {t!r} (known: {', '.join(sorted(known))})")
    return cls


def _build(name: str, raw: Any, rng: random.Random) -> ProfileScheduler:
    where = f"profiles.{name}"
    p = Params(raw, where)
    kind = p.raw("type", "scoring")
    if kind not in ("scoring", "decision-tree"):
        raise ConfigError(p.field("type"), f"must be 'scoring' or 'decision-tree', got {kind!r}")

    sat = Params(p.raw("saturation"), p.field("saturation"))
    thresholds = Thresholds(
        queue=sat.integer("queue_threshold", 5, lo=0),
        kv=sat.number("kv_threshold", 0.8, lo=0.0, hi=1.0),
        staleness=sat.number("staleness_ms", 200, lo=0) / 1000.0,
        include_inflight=sat.boolean("include_inflight", False),
    )
    sat.done()

    shed_raw = _list(p.raw("shed", ["Sheddable"]), p.field("shed"))
    for i, c in enumerate(shed_raw):
        if c not in CRITICALITIES:
            known = ", ".join(CRITICALITIES)
            raise ConfigError(f"{p.field('shed')}[{i}]", f"must be one of {known}, got {c!r}")
    if "Critical" in shed_raw:
        raise ConfigError(p.field("shed"), "Critical requests are never shed")

    inf = Params(p.raw("inflight"), p.field("inflight"))
    inflight = InflightTracker(
        ttl=inf.number("ttl_s", 60.0, lo=0.001), propagation=inf.number("propagation_ms", 20.0, lo=0) / 1000.0
    )
    inf.done()
    pre = Params(p.raw("prefix"), p.field("prefix"))
    prefix = PrefixIndex(pre.integer("default_capacity_blocks", DEFAULT_CAPACITY_BLOCKS, lo=1))
    pre.done()

    fallbacks = p.integer("fallbacks", 2, lo=0, hi=16)
    unsat_only = p.boolean("sheddable_unsaturated_only", False)
    require_served = p.boolean("require_served_model", True)
    default_out = p.integer("default_output_tokens", 200, lo=0)
    max_candidates = p.integer("max_candidates", 0, lo=0)
    on_error = _ErrorLog()

    if kind == "decision-tree":
        for key in ("filters", "scorers", "picker"):
            if p.has(key):
                raise ConfigError(p.field(key), "not used by a decision-tree profile")
        selector: Any = DecisionTreeSelector.from_params(Params(p.raw("tree"), p.field("tree")))
    else:
        if p.has("tree"):
            raise ConfigError(p.field("tree"), "only used by a decision-tree profile")
        filters: list[Filter] = []
        for i, entry in enumerate(_list(p.raw("filters"), p.field("filters"))):
            fp = Params(entry, f"{where}.filters[{i}]")
            filters.append(_plugin_type(fp, FILTERS, "filter").from_params(fp))
        scorers: list[tuple[Scorer, float]] = []
        for i, entry in enumerate(_list(p.raw("scorers"), p.field("scorers"))):
            sp = Params(entry, f"{where}.scorers[{i}]")
            cls = _plugin_type(sp, SCORERS, "scorer")
            if not sp.has("weight"):
                raise ConfigError(sp.field("weight"), "missing (a number >= 0)")
            weight = sp.number("weight", 1.0, lo=0.0)
            scorers.append((cls.from_params(sp), weight))
        pp = Params(p.raw("picker", {"type": "max-score"}), p.field("picker"))
        picker = _plugin_type(pp, PICKERS, "picker").from_params(pp)
        pp.done()
        selector = ScoringSelector(filters, scorers, picker, on_error=on_error, profile=name)
    p.done()
    return ProfileScheduler(
        name,
        selector,
        thresholds=thresholds,
        shed=frozenset(shed_raw),
        sheddable_unsaturated_only=unsat_only,
        require_served_model=require_served,
        fallbacks=fallbacks,
        inflight=inflight,
        prefix=prefix,
        default_output_tokens=default_out,
        max_candidates=max_candidates,
        rng=rng,
        on_error=on_error,
    )
