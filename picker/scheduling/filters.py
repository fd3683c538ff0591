"""Filters: narrow a group of endpoints. All are *soft*: when none passes, the group is kept.

The readiness and candidate-restriction filters are not here: they are part of every
profile and run inside the scheduler's single gathering pass (see ``framework``).
The ``least_*`` helpers are the v0.2/v0.3 decision tree's building blocks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .context import Context
from .params import Params
from .plugin import Plugin, register
from .scorers import serves_base
from .state import EndpointState

__all__ = [
    "Filter",
    "LoraAffinityFilter",
    "LowQueueFilter",
    "least_kv",
    "least_queue",
    "lora_low_cost",
    "lora_soft_affinity",
]

Group = Sequence[EndpointState]


def _band(values: list[float], n: int) -> float:
    """Upper edge of the "least" band: ``min + (max - min) / n``."""
    lo = min(values)
    return lo + (max(values) - lo) / n


def least_queue(group: Group) -> list[EndpointState]:
    """Pods whose waiting count is within ``[min, min + (max - min) / N]``."""
    if len(group) <= 1:
        return list(group)
    qs = [s.waiting for s in group]
    edge = _band(qs, len(group))  # type: ignore[arg-type]
    return [s for s, q in zip(group, qs, strict=True) if q <= edge]


def least_kv(group: Group) -> list[EndpointState]:
    """Pods whose KV usage is within ``[min, min + (max - min) / N]``."""
    if len(group) <= 1:
        return list(group)
    kvs = [s.kv for s in group]
    edge = _band(kvs, len(group))
    return [s for s, k in zip(group, kvs, strict=True) if k <= edge]


def lora_low_cost(group: Group, target: str) -> list[EndpointState]:
    """Pods where the adapter is active or can be loaded without evicting one (soft)."""
    out = [
        s
        for s in group
        if target in s.lora_running or target in s.lora_waiting or s.lora_slots_free or serves_base(s, target)
    ]
    return out or list(group)


def lora_soft_affinity(
    group: Group, target: str, rng: random.Random, probability: float
) -> list[EndpointState]:
    """v0.3's soft affinity: pods with the adapter active, with probability ``p``; else pods with a slot."""
    affinity: list[EndpointState] = []
    available: list[EndpointState] = []
    for s in group:
        if target in s.lora_running or target in s.lora_waiting or serves_base(s, target):
            affinity.append(s)
        elif s.lora_slots_free:
            available.append(s)
    if affinity and available:
        return affinity if rng.random() < probability else available
    return affinity or available or list(group)


class Filter(Plugin):
    """Base class: return the endpoints of ``group`` that pass, or ``group`` when none does."""

    def filter(self, ctx: Context, group: Group) -> Sequence[EndpointState]:  # pragma: no cover
        raise NotImplementedError


@register("lora-affinity-filter")
class LoraAffinityFilter(Filter):
    """Keep pods that have the adapter or a free slot for it."""

    def filter(self, ctx: Context, group: Group) -> Sequence[EndpointState]:
        target = ctx.request.target_model
        bm = ctx.base_models
        if len(bm) == 1 and target in bm:
            return group
        return lora_low_cost(group, target)


@register("low-queue")
class LowQueueFilter(Filter):
    """Keep pods whose waiting count (plus in-flight) is below ``threshold``."""

    def __init__(self, threshold: int = 128) -> None:
        self.threshold = threshold

    def filter(self, ctx: Context, group: Group) -> Sequence[EndpointState]:
        t = self.threshold
        out = [s for s in group if s.waiting + s.load.n < t]
        return out or group

    @classmethod
    def from_params(cls, p: Params) -> LowQueueFilter:
        out = cls(threshold=p.integer("threshold", 128, lo=0))
        p.done()
        return out
