"""Read a scheduling config's shape into plugin declarations and profiles, with field paths.

Two shapes are read (README.md, "Config file"):

* **version 2** (current), after upstream's ``EndpointPickerConfig``: plugin instances
  declared once under ``plugins:`` (``name``, ``type``, ``parameters``) and referenced by
  name from ``schedulingProfiles:`` (``pluginRef``, and ``weight`` for scorers); a profile
  may ``extends:`` another and override some of its fields;
* **version 1** (deprecated): ``profiles:`` with each profile's ``filters``, ``scorers``,
  ``picker`` and ``tree`` written inline. It is converted here, keeping its own field
  paths in errors, and a warning is logged once per source.

Nothing is built here: ``config.py`` builds and checks the plugins of each profile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .params import ConfigError, Params
from .plugin import import_plugin_modules

__all__ = ["ConfigSpec", "PluginRef", "PluginSpec", "ProfileSpec", "parse"]

log = logging.getLogger("picker.scheduling")

# Version 1 named the LoRA filter like the LoRA scorer; one registry needs distinct names.
_V1_FILTER_TYPES = {"lora-affinity": "lora-affinity-filter"}
# Profile fields whose mapping values an `extends:` child merges key by key.
_MERGED_FIELDS = ("saturation", "inflight", "prefix")
_warned: set[str] = set()


@dataclass(frozen=True)
class PluginSpec:
    """One declared plugin instance. ``where`` locates the declaration, ``params_where`` its parameters."""

    name: str
    type: str
    params: dict[str, Any]
    where: str
    params_where: str


@dataclass(frozen=True)
class PluginRef:
    """A profile's use of a plugin: ``weight`` for scorers; ``role`` set by version-1 lists."""

    plugin: PluginSpec
    weight: Any
    where: str
    role: str | None = None


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    refs: tuple[PluginRef, ...]
    settings: dict[str, Any]  # every other profile field (saturation, shed, fallbacks, ...)
    where: str


@dataclass(frozen=True)
class ConfigSpec:
    profiles: dict[str, ProfileSpec]
    plugins: dict[str, PluginSpec] = field(default_factory=dict)


def parse(data: Any, source: str) -> ConfigSpec:
    """The config's profiles and plugin declarations; every error names its field."""
    if not isinstance(data, dict):
        raise ConfigError("config", f"must be a mapping, got {type(data).__name__}")
    legacy = "profiles" in data and "schedulingProfiles" not in data
    top = Params(data, "")
    version = top.integer("version", 1 if legacy else 2)
    if version == 1:
        spec = _parse_v1(top)
        if source not in _warned:
            _warned.add(source)
            log.warning(
                "scheduling config %s uses the deprecated version-1 shape (profiles: with inline "
                "filters/scorers/picker); it still loads, but write version 2 (plugins: + "
                "schedulingProfiles:, see picker/scheduling/README.md)",
                source,
            )
        return spec
    if version != 2:
        raise ConfigError("version", f"unsupported version {version} (this build reads 2, and 1 deprecated)")
    if top.has("profiles"):
        raise ConfigError("profiles", "the version-1 shape; version 2 has plugins: and schedulingProfiles:")
    return _parse_v2(top)


# -- version 2 ---------------------------------------------------------------------------


def _parse_v2(top: Params) -> ConfigSpec:
    import_plugin_modules(top.raw("pluginModules"), "pluginModules")
    plugins: dict[str, PluginSpec] = {}
    for i, entry in enumerate(_list(top.raw("plugins"), "plugins")):
        where = f"plugins[{i}]"
        p = Params(entry, where)
        ptype = p.string("type") if p.has("type") else None
        if ptype is None:
            raise ConfigError(p.field("type"), "missing plugin type")
        name = p.string("name", ptype)
        params = p.raw("parameters")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(p.field("parameters"), f"must be a mapping, got {type(params).__name__}")
        p.done()
        if name in plugins:
            raise ConfigError(p.field("name"), f"duplicate plugin name {name!r} (also {plugins[name].where})")
        plugins[name] = PluginSpec(name, ptype, dict(params or {}), where, f"{where}.parameters")

    raw_profiles = _list(top.raw("schedulingProfiles"), "schedulingProfiles")
    if not raw_profiles:
        raise ConfigError("schedulingProfiles", "must be a non-empty list of profiles")
    top.done()
    own: dict[str, tuple[dict[str, Any], str]] = {}
    for j, entry in enumerate(raw_profiles):
        where = f"schedulingProfiles[{j}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, f"must be a mapping, got {type(entry).__name__}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name", f"must be a non-empty string, got {name!r}")
        if name in own:
            raise ConfigError(f"{where}.name", f"duplicate profile name {name!r} (also {own[name][1]})")
        own[name] = (entry, where)

    resolved: dict[str, tuple[dict[str, Any], tuple[PluginRef, ...] | None]] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> tuple[dict[str, Any], tuple[PluginRef, ...] | None]:
        if name in resolved:
            return resolved[name]
        entry, where = own[name]
        fields = {k: v for k, v in entry.items() if k not in ("name", "extends", "plugins")}
        refs = _refs(entry["plugins"], f"{where}.plugins", plugins) if "plugins" in entry else None
        parent = entry.get("extends")
        if parent is not None:
            if not isinstance(parent, str) or parent not in own:
                known = ", ".join(sorted(own))
                raise ConfigError(f"{where}.extends", f"no profile named {parent!r} (known: {known})")
            if parent in chain:
                raise ConfigError(f"{where}.extends", f"cycle: {' -> '.join((*chain, parent))}")
            p_fields, p_refs = resolve(parent, (*chain, parent))
            fields = _merge(p_fields, fields)
            refs = p_refs if refs is None else refs
        resolved[name] = (fields, refs)
        return fields, refs

    profiles: dict[str, ProfileSpec] = {}
    for name, (_, where) in own.items():
        fields, refs = resolve(name, (name,))
        profiles[name] = ProfileSpec(name, refs or (), fields, where)
    return ConfigSpec(profiles, plugins)


def _refs(value: Any, where: str, plugins: dict[str, PluginSpec]) -> tuple[PluginRef, ...]:
    out = []
    for k, entry in enumerate(_list(value, where)):
        rw = f"{where}[{k}]"
        p = Params(entry, rw)
        ref = p.string("pluginRef") if p.has("pluginRef") else None
        if ref is None:
            raise ConfigError(p.field("pluginRef"), "missing (the name of a plugin declared under plugins:)")
        spec = plugins.get(ref)
        if spec is None:
            known = ", ".join(sorted(plugins)) or "none declared"
            raise ConfigError(p.field("pluginRef"), f"no plugin named {ref!r} (known: {known})")
        weight = p.raw("weight")
        p.done()
        out.append(PluginRef(spec, weight, rw))
    return tuple(out)


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``extends``: the child's fields win; its saturation/inflight/prefix merge key by key."""
    out = dict(parent)
    for k, v in child.items():
        pv = out.get(k)
        out[k] = {**pv, **v} if k in _MERGED_FIELDS and isinstance(pv, dict) and isinstance(v, dict) else v
    return out


# -- version 1 (deprecated) --------------------------------------------------------------


def _parse_v1(top: Params) -> ConfigSpec:
    profiles = top.raw("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise ConfigError("profiles", "must be a non-empty mapping of profile name -> profile")
    top.done()
    out: dict[str, ProfileSpec] = {}
    for pname, raw in profiles.items():
        if not isinstance(pname, str) or not pname:
            raise ConfigError("profiles", f"profile names must be non-empty strings, got {pname!r}")
        where = f"profiles.{pname}"
        if not isinstance(raw, dict):
            raise ConfigError(where, f"must be a mapping, got {type(raw).__name__}")
        fields = dict(raw)
        kind = fields.pop("type", "scoring")
        if kind not in ("scoring", "decision-tree"):
            raise ConfigError(f"{where}.type", f"must be 'scoring' or 'decision-tree', got {kind!r}")
        refs: list[PluginRef] = []
        if kind == "decision-tree":
            for key in ("filters", "scorers", "picker"):
                if key in fields:
                    raise ConfigError(f"{where}.{key}", "not used by a decision-tree profile")
            tree = fields.pop("tree", None)
            if tree is not None and not isinstance(tree, dict):
                raise ConfigError(f"{where}.tree", f"must be a mapping, got {type(tree).__name__}")
            tw = f"{where}.tree"
            spec = PluginSpec("decision-tree", "decision-tree", dict(tree or {}), tw, tw)
            refs.append(PluginRef(spec, None, tw, "selector"))
        else:
            if "tree" in fields:
                raise ConfigError(f"{where}.tree", "only used by a decision-tree profile")
            for i, entry in enumerate(_list(fields.pop("filters", None), f"{where}.filters")):
                refs.append(_v1_ref(entry, f"{where}.filters[{i}]", "filter"))
            for i, entry in enumerate(_list(fields.pop("scorers", None), f"{where}.scorers")):
                refs.append(_v1_ref(entry, f"{where}.scorers[{i}]", "scorer"))
            refs.append(_v1_ref(fields.pop("picker", {"type": "max-score"}), f"{where}.picker", "picker"))
        out[pname] = ProfileSpec(pname, tuple(refs), fields, where)
    return ConfigSpec(out)


def _v1_ref(entry: Any, where: str, role: str) -> PluginRef:
    if not isinstance(entry, dict):
        raise ConfigError(where, f"must be a mapping, got {type(entry).__name__}")
    params = dict(entry)
    ptype = params.pop("type", None)
    if not isinstance(ptype, str) or not ptype:
        problem = f"missing {role} type" if ptype is None else f"must be a name, got {ptype!r}"
        raise ConfigError(f"{where}.type", problem)
    if role == "filter":
        ptype = _V1_FILTER_TYPES.get(ptype, ptype)
    weight = params.pop("weight", None)
    if role == "scorer" and weight is None:
        raise ConfigError(f"{where}.weight", "missing (a number >= 0)")
    if weight is not None and role != "scorer":
        params["weight"] = weight  # not ours to take: reported as an unknown parameter
        weight = None
    return PluginRef(PluginSpec(ptype, ptype, params, where, where), weight, where, role)


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(where, f"must be a list, got {type(value).__name__}")
    return value
