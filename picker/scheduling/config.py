"""Scheduling profiles from YAML: ``load_config`` and ``build_profile``.

The shapes are read by :mod:`.spec`; here each profile's plugins are built from the open
registry (:mod:`.plugin`), checked (role, weight, one picker), put in data order
(every consumer after its producer, see :func:`_order`) and composed with the profile's
own settings into a :class:`~.profile.Profile`: a :class:`~.pool.PoolState` (thresholds,
in-flight, prefix settings), a :class:`~.admission.SheddingAdmission` (``shed``) and a
:class:`~.framework.ProfileScheduler` (the plugins, fallbacks, candidate window).

Every profile is built once at load time, so a bad file fails at startup with the path
of the offending field (``schedulingProfiles[2].plugins[1].weight: must be >= 0.0``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import choosers as _choosers  # noqa: F401
from . import filters as _filters  # noqa: F401  (import registers the built-in plugin types)
from . import scorers as _scorers  # noqa: F401
from . import slo as _slo  # noqa: F401  (the slo-latency selector)
from .admission import SheddingAdmission
from .api import CRITICALITIES
from .choosers import Chooser
from .filters import Filter
from .framework import ProfileScheduler, ScoringSelector
from .inflight import InflightTracker
from .params import ConfigError, Params
from .plugin import factory_of, producers_of, registered
from .pool import ErrorLog, PoolState
from .prefix import DEFAULT_CAPACITY_BLOCKS, PrefixIndex
from .profile import Profile
from .scorers import Scorer
from .spec import ConfigSpec, PluginRef, PluginSpec, ProfileSpec, parse
from .state import Thresholds
from .tree import DecisionTreeSelector

__all__ = ["BUILTIN_CONFIG", "SchedulingConfig", "build_profile", "load_config"]

log = logging.getLogger("picker.scheduling")

BUILTIN_CONFIG = Path(__file__).with_name("profiles.yaml")
_PHASES = {"filter": 0, "scorer": 1, "selector": 1, "picker": 2}  # the order roles run in


@dataclass(frozen=True)
class SchedulingConfig:
    """A validated config: its profiles (built anew per scheduler) and plugin declarations."""

    profiles: dict[str, ProfileSpec]
    source: str = "<dict>"
    plugins: dict[str, PluginSpec] | None = None

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
    spec: ConfigSpec = parse(data, name)
    for decl in spec.plugins.values():  # a declared plugin fails here even when no profile uses it
        _instance(decl)
    for profile in spec.profiles.values():
        _build(profile, random.Random(0))
    return SchedulingConfig(spec.profiles, name, spec.plugins)


def build_profile(
    profile_name: str,
    config: str | Path | dict[str, Any] | SchedulingConfig | None = None,
    rng: random.Random | None = None,
) -> Profile:
    """A fresh profile: its own pool state (in-flight, prefix index), admission and plugin instances.

    Pass a seeded ``random.Random`` for reproducible decisions (the simulation does).
    """
    cfg = load_config(config)
    spec = cfg.profiles.get(profile_name)
    if spec is None:
        raise ConfigError(
            "profile", f"unknown profile {profile_name!r} (known: {', '.join(sorted(cfg.profiles))})"
        )
    return _build(spec, rng or random.Random())


# -- plugins -----------------------------------------------------------------------------


def _instance(decl: PluginSpec) -> Any:
    make = factory_of(decl.type)
    if make is None:
        known = ", ".join(registered())
        raise ConfigError(f"{decl.where}.type", f"unknown plugin type {decl.type!r} (known: {known})")
    p = Params(decl.params, decl.params_where)
    plugin = make(p)
    p.done()
    try:
        plugin.name = decl.name
    except AttributeError:  # a plugin with slots and no name: errors use its type
        pass
    return plugin


def _role(plugin: Any) -> str | None:
    if isinstance(plugin, Scorer):
        return "scorer"
    if isinstance(plugin, Filter):
        return "filter"
    if isinstance(plugin, Chooser):
        return "picker"
    if isinstance(plugin, DecisionTreeSelector) or callable(getattr(plugin, "select", None)):
        return "selector"
    return None


@dataclass
class _Use:
    """One built plugin of a profile, with where its reference is written."""

    ref: PluginRef
    plugin: Any
    role: str
    weight: float
    index: int  # position in the profile, for a stable order


def _uses(profile: ProfileSpec) -> list[_Use]:
    out: list[_Use] = []
    picker: _Use | None = None
    for k, ref in enumerate(profile.refs):
        plugin = _instance(ref.plugin)
        role = _role(plugin)
        t = ref.plugin.type
        if role is None:
            raise ConfigError(ref.where, f"plugin type {t!r} is not a filter, scorer, picker or selector")
        if ref.role is not None and ref.role != role:
            raise ConfigError(f"{ref.plugin.where}.type", f"{t!r} is a {role}, not a {ref.role}")
        weight = 0.0
        if role == "scorer":
            if ref.weight is None:
                raise ConfigError(f"{ref.where}.weight", "missing (a number >= 0)")
            weight = Params({"weight": ref.weight}, ref.where).number("weight", 1.0, lo=0.0)
        elif ref.weight is not None:
            raise ConfigError(f"{ref.where}.weight", f"only scorers take a weight ({t!r} is a {role})")
        if role == "picker" and picker is not None:
            raise ConfigError(ref.where, f"a profile has one picker (already {picker.ref.where})")
        use = _Use(ref, plugin, role, weight, k)
        picker = use if role == "picker" else picker
        out.append(use)
    selectors = [u for u in out if u.role == "selector"]
    if selectors and len(out) > 1:
        other = next(u for u in out if u.role != "selector")
        name = selectors[0].ref.plugin.name
        problem = f"a {other.role} cannot join the selector {name!r}: it works alone"
        raise ConfigError(other.ref.where, problem)
    return out


def _order(profile: ProfileSpec, uses: list[_Use]) -> list[_Use]:
    """Every consumer after the producer of each key it consumes, or a ConfigError naming both.

    Roles run in phases (filters, then scorers, then the picker), so a producer must be in
    the consumer's phase or an earlier one. Within a phase the declared order is kept
    unless a consumer is listed before its producer: then the consumer moves just after
    it (a stable topological order), and a cycle is refused.
    """
    producer: dict[str, _Use] = {}
    for u in uses:
        for key in sorted(getattr(u.plugin, "produces", ())):
            if key in producer:
                first = producer[key].ref.plugin.name
                raise ConfigError(
                    u.ref.where,
                    f"{u.ref.plugin.name!r} and {first!r} both produce {key!r}: "
                    "a consumer could not tell which it reads",
                )
            producer[key] = u
    deps: dict[int, set[int]] = {}
    for u in uses:
        need: set[int] = set()
        for key in sorted(getattr(u.plugin, "consumes", ())):
            src = producer.get(key)
            label = f"{u.ref.plugin.name!r} ({u.ref.plugin.type})"
            if src is None:
                hint = ", ".join(producers_of(key)) or "none registered"
                raise ConfigError(
                    u.ref.where,
                    f"{label} consumes {key!r}, which no plugin of profile {profile.name!r} produces "
                    f"(types that produce it: {hint})",
                )
            if _PHASES[src.role] > _PHASES[u.role]:
                raise ConfigError(
                    u.ref.where,
                    f"{label} consumes {key!r} from {src.ref.plugin.name!r}, a {src.role}, "
                    f"which runs after this {u.role}",
                )
            if src is not u:
                need.add(src.index)
        deps[u.index] = need
    by_index = {u.index: u for u in uses}
    done: list[_Use] = []
    placed: set[int] = set()
    pending = sorted(by_index)
    while pending:
        ready = next((i for i in pending if deps[i] <= placed), None)
        if ready is None:
            names = " -> ".join(by_index[i].ref.plugin.name for i in pending)
            raise ConfigError(f"{profile.where}.plugins", f"the data dependencies form a cycle: {names}")
        pending.remove(ready)
        placed.add(ready)
        done.append(by_index[ready])
    moved = [u.ref.plugin.name for u, v in zip(done, uses, strict=True) if u is not v]
    if moved:
        log.info("scheduling profile %r: plugins reordered for their data: %s", profile.name, moved)
    consumed = {k for u in uses for k in getattr(u.plugin, "consumes", ())}
    # A weight-0 scorer adds nothing: keep it only while its data is consumed.
    return [
        u
        for u in done
        if u.role != "scorer" or u.weight > 0 or consumed & set(getattr(u.plugin, "produces", ()))
    ]


# -- profiles ----------------------------------------------------------------------------


def _build(profile: ProfileSpec, rng: random.Random) -> Profile:
    p = Params(profile.settings, profile.where)
    sat = Params(p.raw("saturation"), p.field("saturation"))
    thresholds = Thresholds(
        queue=sat.integer("queue_threshold", 5, lo=0),
        kv=sat.number("kv_threshold", 0.8, lo=0.0, hi=1.0),
        staleness=sat.number("staleness_ms", 200, lo=0) / 1000.0,
        include_inflight=sat.boolean("include_inflight", False),
    )
    sat.done()

    shed_raw = p.raw("shed", ["Sheddable"])
    if shed_raw is None:
        shed_raw = []
    if not isinstance(shed_raw, list):
        raise ConfigError(p.field("shed"), f"must be a list, got {type(shed_raw).__name__}")
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
    from picker.flow.config import parse_flow_config  # here: picker.flow imports this package

    flow = parse_flow_config(p.raw("flow_control"), p.field("flow_control"))
    p.done()
    on_error = ErrorLog()

    uses = _order(profile, _uses(profile))
    selector: Any
    if uses and uses[0].role == "selector":
        selector = uses[0].plugin
    else:
        pickers = [u.plugin for u in uses if u.role == "picker"]
        selector = ScoringSelector(
            [u.plugin for u in uses if u.role == "filter"],
            [(u.plugin, u.weight) for u in uses if u.role == "scorer"],
            pickers[0] if pickers else None,
            on_error=on_error,
            profile=profile.name,
        )
    shed = frozenset(shed_raw)
    state = PoolState(
        thresholds=thresholds,
        inflight=inflight,
        prefix=prefix,
        default_output_tokens=default_out,
        require_served_model=require_served,
        name=profile.name,
        on_error=on_error,
    )
    for u in uses:  # plugins that learn from the pool's traffic (picker.latency) attach to its state
        bind = getattr(u.plugin, "bind_state", None)
        if callable(bind):
            bind(state)
    scheduler = ProfileScheduler(
        profile.name,
        selector,
        unsaturated_only=shed if unsat_only else frozenset(),
        fallbacks=fallbacks,
        max_candidates=max_candidates,
        rng=rng,
        on_error=on_error,
    )
    return Profile(profile.name, state, SheddingAdmission(shed, profile=profile.name), scheduler, flow)
