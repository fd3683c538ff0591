"""InferenceObjective and InferenceModelRewrite: the APIs that replaced InferenceModel upstream.

Both kinds exist in two API groups with the same shape, ``inference.networking.x-k8s.io/v1alpha2``
(Gateway API Inference Extension) and ``llm-d.ai/v1alpha2`` (llm-d-router, where the Endpoint
Picker moved), so one parser serves both. Validation follows upstream's CRDs, and every error
names its field path.

- InferenceObjective: ``spec.priority`` (int32, optional: unset means 0; negative means
  sheddable) and the pool it applies to. A request chooses it with the objective header, by
  ``metadata.name``. GIE requires ``spec.poolRef``; llm-d also accepts ``spec.poolRefs`` (a
  list) or ``spec.poolSelector`` (``matchLabels`` against the pool's labels).
- InferenceModelRewrite: ``spec.poolRef`` and ``spec.rules[]``; a rule's ``matches[]`` are
  ``model: {type: Exact, value}`` (any one matching suffices; no matches = every model), its
  ``targets[]`` a weighted split ``{modelRewrite, weight 1..1,000,000}``. As for InferenceModel's
  ``targetModels``, weights are set on all targets or on none (upstream's documented rule;
  InferGate rejects a mix instead of guessing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .crdcheck import Checker, Meta

GIE_V1ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"
LLMD_V1ALPHA2 = "llm-d.ai/v1alpha2"
ROUTING_VERSIONS = (GIE_V1ALPHA2, LLMD_V1ALPHA2)
POOL_GROUPS = {GIE_V1ALPHA2: "inference.networking.k8s.io", LLMD_V1ALPHA2: "llm-d.ai"}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MIN_WEIGHT, MAX_WEIGHT = 1, 1_000_000
MAX_POOL_REFS = 16
MATCH_TYPES = ("Exact",)


@dataclass(frozen=True, slots=True)
class InferenceObjective:
    name: str
    namespace: str
    priority: int | None  # None: unset (counts as 0)
    pool_refs: tuple[str, ...] = ()  # pool names (poolRef, or llm-d's poolRefs)
    pool_selector: Mapping[str, str] | None = None  # llm-d's poolSelector.matchLabels
    api_version: str = GIE_V1ALPHA2
    created: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def effective_priority(self) -> int:
        return self.priority if self.priority is not None else 0

    def applies_to(self, pool_name: str | None, pool_labels: Mapping[str, str] | None = None) -> bool:
        """True when the objective targets the pool (``pool_name`` None: every pool)."""
        if pool_name is None or pool_name in self.pool_refs:
            return True
        if self.pool_selector is not None and pool_labels is not None:
            return all(pool_labels.get(k) == v for k, v in self.pool_selector.items())
        return False


@dataclass(frozen=True, slots=True)
class RewriteTarget:
    model: str
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class RewriteRule:
    matches: tuple[str, ...] = ()  # Exact model names; empty = every model (a generic rule)
    targets: tuple[RewriteTarget, ...] = ()  # empty = keep the requested model

    @property
    def generic(self) -> bool:
        return not self.matches


@dataclass(frozen=True, slots=True)
class InferenceModelRewrite:
    name: str
    namespace: str
    pool_ref: str
    rules: tuple[RewriteRule, ...] = field(default_factory=tuple)
    api_version: str = GIE_V1ALPHA2
    created: float | None = None
    # ``infergate.io/rollout*`` annotations: the progressive-rollout marker and its settings,
    # kept raw here and read by picker/rollout (an invalid value disables only the rollout).
    rollout: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


ROLLOUT_ANNOTATION_PREFIX = "infergate.io/rollout"


def _rollout_annotations(obj: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    meta = obj.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(notes, Mapping):
        return ()
    return tuple(
        sorted(
            (str(k), str(v))
            for k, v in notes.items()
            if isinstance(k, str)
            and k.startswith(ROLLOUT_ANNOTATION_PREFIX)
            and isinstance(v, str | int | float)
        )
    )


def _pool_ref(c: Checker, value: Any, path: str, api_version: str, required: bool) -> str:
    ref = c.mapping(value, path, required=required)
    if not ref:
        return ""
    c.group(ref.get("group"), f"{path}.group", POOL_GROUPS.get(api_version, ""))
    kind = c.kind(ref.get("kind"), f"{path}.kind", "InferencePool")
    if kind != "InferencePool" and not c.has_error(f"{path}.kind"):
        c.fail(f"{path}.kind", f"must be InferencePool (got {kind!r})")
    return c.string(ref.get("name"), f"{path}.name", max_len=253)


def parse_objective(obj: Mapping[str, Any], meta: Meta, c: Checker) -> InferenceObjective:
    api_version = str(obj.get("apiVersion"))
    spec = c.mapping(obj.get("spec"), "spec")
    priority = c.integer(spec.get("priority"), "spec.priority", INT32_MIN, INT32_MAX, required=False)
    refs: list[str] = []
    selector: dict[str, str] | None = None
    llmd = api_version == LLMD_V1ALPHA2
    has_any = any(spec.get(k) is not None for k in ("poolRef", "poolRefs", "poolSelector"))
    name = _pool_ref(c, spec.get("poolRef"), "spec.poolRef", api_version, required=not (llmd and has_any))
    if name:
        refs.append(name)
    if llmd:
        raw = c.array(spec.get("poolRefs"), "spec.poolRefs", min_items=1, max_items=MAX_POOL_REFS)
        for i, item in enumerate(raw):
            ref = _pool_ref(c, item, f"spec.poolRefs[{i}]", api_version, required=True)
            if ref in refs and ref:
                c.fail(f"spec.poolRefs[{i}].name", f"duplicate pool {ref!r}")
            elif ref:
                refs.append(ref)
        if spec.get("poolSelector") is not None:
            sel = c.mapping(spec.get("poolSelector"), "spec.poolSelector")
            if sel.get("matchExpressions"):
                c.fail("spec.poolSelector.matchExpressions", "not supported: use matchLabels")
            selector = c.labels(sel.get("matchLabels"), "spec.poolSelector.matchLabels")
    return InferenceObjective(
        meta.name, meta.namespace, priority, tuple(refs), selector, api_version, meta.created
    )


def parse_rewrite(obj: Mapping[str, Any], meta: Meta, c: Checker) -> InferenceModelRewrite:
    api_version = str(obj.get("apiVersion"))
    spec = c.mapping(obj.get("spec"), "spec")
    pool = _pool_ref(c, spec.get("poolRef"), "spec.poolRef", api_version, required=True)
    rules: list[RewriteRule] = []
    for i, raw_rule in enumerate(c.array(spec.get("rules"), "spec.rules", required=True)):
        path = f"spec.rules[{i}]"
        rule = c.mapping(raw_rule, path)
        matches: list[str] = []
        for j, raw_match in enumerate(c.array(rule.get("matches"), f"{path}.matches")):
            mpath = f"{path}.matches[{j}]"
            model = c.mapping(c.mapping(raw_match, mpath).get("model"), f"{mpath}.model")
            if model:
                c.enum(model.get("type"), f"{mpath}.model.type", MATCH_TYPES, "Exact")
                value = c.string(model.get("value"), f"{mpath}.model.value")
                if value and value not in matches:
                    matches.append(value)
        targets: list[RewriteTarget] = []
        raw_targets = c.array(rule.get("targets"), f"{path}.targets", min_items=1)
        for j, raw_target in enumerate(raw_targets):
            tpath = f"{path}.targets[{j}]"
            target = c.mapping(raw_target, tpath)
            model_name = c.string(target.get("modelRewrite"), f"{tpath}.modelRewrite")
            weight = c.integer(
                target.get("weight"), f"{tpath}.weight", MIN_WEIGHT, MAX_WEIGHT, required=False
            )
            targets.append(RewriteTarget(model_name, weight))
        weighted = [isinstance(t, Mapping) and t.get("weight") is not None for t in raw_targets]
        if any(weighted) and not all(weighted):
            c.fail(f"{path}.targets", "weights must be set on all targets or on none")
        rules.append(RewriteRule(tuple(matches), tuple(targets)))
    return InferenceModelRewrite(
        meta.name, meta.namespace, pool, tuple(rules), api_version, meta.created, _rollout_annotations(obj)
    )
