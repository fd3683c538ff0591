"""Model resolution: from the client's ``model`` and headers to a priority and a target model.

Three kinds configure it (see the README's "APIs" section), all scoped to the picker's pool:

- **InferenceObjective** (``inference.networking.x-k8s.io`` or ``llm-d.ai``, v1alpha2): a
  named ``priority``; a request picks one with the objective header, by ``metadata.name``.
- **InferenceModelRewrite** (same groups): rules mapping a client-facing model to a weighted
  split over target models. Precedence, as upstream defines it: a rule with an ``Exact``
  match for the model beats a generic rule (no ``matches``); among equals the oldest
  resource (``metadata.creationTimestamp``; objects without one, as in files, count as
  newest; then ``metadata.name``) wins, and inside one resource the first rule.
- **InferenceModel** (v1alpha2, deprecated upstream, still supported): its ``modelName`` is
  an Exact rewrite rule over ``targetModels`` (none: the model itself) and its criticality
  a priority, :data:`CRITICALITY_PRIORITY`: Critical 100, Standard 0, Sheddable -100. When
  an InferenceModelRewrite has an Exact rule for the same model, the newer API decides the
  target (the InferenceModel still gives the model's default priority, which the rewrite
  API has no field for). An InferenceModel still beats a generic rewrite rule.

Per request:

1. Target: the ``x-gateway-model-name-rewrite`` header names it directly (never unknown);
   else the Exact rewrite rule, else the InferenceModel, else the generic rewrite rule.
2. Priority: the objective header names an InferenceObjective (or, as before, an
   InferenceModel by ``metadata.name`` or ``modelName``); else the requested model's
   InferenceModel; else 0. Criticality, which the scheduler uses, follows the priority:
   positive Critical, 0 Standard, negative Sheddable.
3. A model nothing matches follows ``--unknown-model-policy``: ``route`` (default, as
   upstream v1: priority 0, routed under its own name, never shed), ``sheddable``
   (InferGate's earlier default: priority -100) or ``reject`` (404, as upstream v0.x).
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared import crds

__all__ = [
    "CRITICALITY_PRIORITY",
    "DEFAULT_POLICY",
    "POLICIES",
    "ModelTable",
    "Resolution",
    "UnknownModel",
    "criticality_of",
]

log = logging.getLogger(__name__)

POLICIES = ("route", "sheddable", "reject")
DEFAULT_POLICY = "route"
CRITICALITY_PRIORITY = {"Critical": 100, "Standard": 0, "Sheddable": -100}


def criticality_of(priority: int) -> str:
    """The scheduler's three bands from a priority: >0 Critical, 0 Standard, <0 Sheddable."""
    return "Critical" if priority > 0 else "Standard" if priority == 0 else "Sheddable"


class UnknownModel(Exception):
    """The model is not served by the pool and the policy is ``reject``."""


@dataclass(frozen=True, slots=True)
class Resolution:
    model: str  # client-facing
    target: str
    criticality: str
    known: bool
    priority: int = 0
    # The InferenceObjective (or InferenceModel) whose priority applies, by metadata.name;
    # None when the default applies. Always a configured name: safe as a metric label.
    objective: str | None = None


class _Split:
    """A weighted choice over target names, O(log n) per draw; no targets keeps the model."""

    __slots__ = ("cumulative", "names", "total")

    def __init__(self, targets: Sequence[tuple[str, int | None]]) -> None:
        self.names = [name for name, _ in targets]
        self.cumulative: list[int] = []
        acc = 0
        for _, weight in targets:
            acc += weight if weight is not None else 1
            self.cumulative.append(acc)
        self.total = acc

    def pick(self, model: str, rng: random.Random) -> str:
        if not self.names:
            return model
        if len(self.names) == 1:
            return self.names[0]
        return self.names[bisect.bisect_right(self.cumulative, rng.random() * self.total)]


def _age_key(res: Any) -> tuple[bool, float, str]:
    """Oldest first; objects without a creationTimestamp last; then by name (stable)."""
    created = getattr(res, "created", None)
    return (created is None, created or 0.0, res.name)


class ModelTable:
    """The pool's objectives, rewrite rules and InferenceModels, indexed for the hot path.

    Built from any mix of parsed resources (other kinds are ignored); replaced wholesale on
    every configuration change.
    """

    def __init__(
        self,
        resources: Iterable[Any] = (),
        pool_name: str | None = None,
        policy: str = DEFAULT_POLICY,
        rng: random.Random | None = None,
        *,
        namespace: str | None = None,
        pool_labels: Mapping[str, str] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown-model policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.rng = rng or random.Random()
        items = [r for r in resources if namespace is None or getattr(r, "namespace", namespace) == namespace]
        if pool_labels is None:  # the pool itself may be among the resources (files)
            pool = next((p for p in crds.pools_of(items) if p.name == pool_name), None)
            pool_labels = pool.labels if pool is not None else None

        def ours(ref: str) -> bool:
            return pool_name is None or ref == pool_name

        models = sorted((m for m in crds.models_of(items) if ours(m.pool_ref)), key=_age_key)
        objectives = sorted(
            (o for o in crds.objectives_of(items) if o.applies_to(pool_name, pool_labels)), key=_age_key
        )
        rewrites = sorted((r for r in crds.rewrites_of(items) if ours(r.pool_ref)), key=_age_key)
        self.by_model: dict[str, crds.InferenceModel] = {}  # modelName -> the oldest InferenceModel
        self.by_name: dict[str, crds.InferenceModel] = {}
        self.objectives: dict[str, crds.InferenceObjective] = {}
        self.exact: dict[str, _Split] = {}  # model -> the winning Exact rewrite rule's split
        self.generic: _Split | None = None
        self._im_splits: dict[str, _Split] = {}
        for m in models:
            self.by_model.setdefault(m.model_name, m)
            self.by_name.setdefault(m.name, m)
        for m in self.by_model.values():
            self._im_splits[m.model_name] = _Split([(t.name, t.weight) for t in m.target_models])
        for o in objectives:
            self.objectives.setdefault(o.name, o)
        # The Exact rule that won for each model, (rewrite, rule index): picker/rollout sets the
        # weights of the rules marked for a progressive rollout through set_weights().
        self.rewrites = rewrites
        self.rule_of: dict[str, tuple[crds.InferenceModelRewrite, int]] = {}
        for r in rewrites:
            for i, rule in enumerate(r.rules):
                split = _Split([(t.model, t.weight) for t in rule.targets])
                if rule.generic:
                    self.generic = self.generic or split
                for value in rule.matches:
                    if value not in self.exact:
                        self.exact[value] = split
                        self.rule_of[value] = (r, i)
        self.overridden = sorted(set(self.exact) & set(self.by_model))
        if models:
            log.warning(
                "InferenceModel is deprecated upstream: use InferenceObjective and InferenceModelRewrite",
                extra={"inference_models": len(models), "overridden_by_rewrites": self.overridden},
            )

    @classmethod
    def from_resources(
        cls,
        resources: Iterable[Any],
        pool_name: str | None,
        policy: str = DEFAULT_POLICY,
        *,
        namespace: str | None = None,
        pool_labels: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> ModelTable:
        return cls(resources, pool_name, policy, rng, namespace=namespace, pool_labels=pool_labels)

    def __len__(self) -> int:
        """Client-facing model names plus objectives: how much configuration was loaded."""
        return len(self.client_names()) + len(self.objectives)

    def client_names(self) -> list[str]:
        """Sorted client-facing names: rewrite rules' Exact matches and InferenceModels' modelName."""
        return sorted(set(self.exact) | set(self.by_model))

    def label_names(self) -> list[str]:
        """Every configured model name, client-facing and rewrite targets: safe metric labels."""
        splits = [*self.exact.values(), *self._im_splits.values(), *([self.generic] if self.generic else [])]
        return sorted(set(self.client_names()).union(*(s.names for s in splits)))

    def set_weights(self, model: str, targets: Sequence[tuple[str, int]]) -> None:
        """Replace the split of ``model``'s Exact rule (a rollout's current weights)."""
        if model in self.exact:
            self.exact[model] = _Split(targets)

    def _priority(self, model: str, objective: str | None) -> tuple[int | None, str | None]:
        if objective:
            ob = self.objectives.get(objective)
            if ob is not None:
                return ob.effective_priority, ob.name
            im = self.by_name.get(objective) or self.by_model.get(objective)
            if im is not None:
                return CRITICALITY_PRIORITY[im.criticality], im.name
        im = self.by_model.get(model)
        if im is not None:
            return CRITICALITY_PRIORITY[im.criticality], im.name
        return None, None

    def resolve(self, model: str, rewrite: str | None = None, objective: str | None = None) -> Resolution:
        """Priority and target for ``model``; raises :class:`UnknownModel` under ``reject``."""
        priority, source = self._priority(model, objective)
        split = self.exact.get(model) or self._im_splits.get(model) or self.generic
        known = split is not None
        if rewrite:
            target = rewrite
        elif split is not None:
            target = split.pick(model, self.rng)
        else:
            if self.policy == "reject":
                raise UnknownModel(model)
            target = model
            if priority is None and self.policy == "sheddable":
                priority = CRITICALITY_PRIORITY["Sheddable"]
        prio = priority if priority is not None else 0
        return Resolution(model, target, criticality_of(prio), known, prio, source)
