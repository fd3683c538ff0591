"""Model resolution: from the client's ``model`` to a criticality and a target model.

An InferenceModel maps a client-facing ``modelName`` to a criticality and to one or
more target models (base models or LoRA adapters) with weights: a weighted random
split (no weights: equal shares). The picker rewrites the request's ``model`` to the
target and restores the client-facing name on the response.

Precedence, documented in the README:

1. ``x-gateway-model-name-rewrite`` names the target directly and overrides the split
   (the gateway's own routing decided it); the request is never rejected as unknown.
2. ``x-gateway-inference-objective`` names an InferenceModel (by ``metadata.name`` or
   ``modelName``) whose criticality the request takes, whatever its ``model``.
3. An unknown ``model`` follows ``--unknown-model-policy``: ``sheddable`` (default, as
   upstream v1: pass through at the lowest priority, target = the requested name) or
   ``reject`` (404, as upstream v0.x).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable
from dataclasses import dataclass

from shared.crds import InferenceModel

__all__ = ["ModelTable", "Resolution", "UnknownModel"]

POLICIES = ("sheddable", "reject")


class UnknownModel(Exception):
    """The model is not served by the pool and the policy is ``reject``."""


@dataclass(frozen=True, slots=True)
class Resolution:
    model: str  # client-facing
    target: str
    criticality: str
    known: bool


class _Split:
    """A weighted choice over target names, O(log n) per draw."""

    __slots__ = ("cumulative", "names", "total")

    def __init__(self, im: InferenceModel) -> None:
        targets = im.target_models
        self.names = [t.name for t in targets] or [im.model_name]
        weights = [t.weight if t.weight is not None else 1 for t in targets] or [1]
        self.cumulative: list[int] = []
        acc = 0
        for w in weights:
            acc += w
            self.cumulative.append(acc)
        self.total = acc

    def pick(self, rng: random.Random) -> str:
        if len(self.names) == 1:
            return self.names[0]
        return self.names[bisect.bisect_right(self.cumulative, rng.random() * self.total)]


class ModelTable:
    """The pool's InferenceModels, indexed for the hot path; replaced wholesale on config change."""

    def __init__(
        self,
        models: Iterable[InferenceModel] = (),
        pool_name: str | None = None,
        policy: str = "sheddable",
        rng: random.Random | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown-model policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.rng = rng or random.Random()
        self.by_model: dict[str, InferenceModel] = {}
        self.by_name: dict[str, InferenceModel] = {}
        self._splits: dict[str, _Split] = {}
        for im in models:
            if pool_name is not None and im.pool_ref != pool_name:
                continue
            self.by_model[im.model_name] = im
            self.by_name[im.name] = im
            self._splits[im.model_name] = _Split(im)

    def __len__(self) -> int:
        return len(self.by_model)

    def objective(self, name: str) -> InferenceModel | None:
        return self.by_name.get(name) or self.by_model.get(name)

    def resolve(self, model: str, rewrite: str | None = None, objective: str | None = None) -> Resolution:
        """Criticality and target for ``model``; raises :class:`UnknownModel` under ``reject``."""
        im = self.by_model.get(model)
        criticality = im.criticality if im is not None else None
        if objective:
            ob = self.objective(objective)
            if ob is not None:
                criticality = ob.criticality
        if rewrite:
            return Resolution(model, rewrite, criticality or "Standard", im is not None)
        if im is None:
            if self.policy == "reject":
                raise UnknownModel(model)
            return Resolution(model, model, criticality or "Sheddable", False)
        return Resolution(model, self._splits[model].pick(self.rng), criticality or "Standard", True)
