"""The v0.2/v0.3 decision tree ("gie-v0"), kept as a faithful baseline.

Critical (and, here, Standard) requests:
  some pod has queue < ``lora_queue_threshold``:
      those pods -> LoRA soft affinity -> least queue -> least KV
  otherwise:
      least queue -> low-cost LoRA -> least KV
Sheddable requests (only when some pod has queue <= 5 and KV <= 0.8; otherwise the
framework has already answered 429): those pods -> least queue -> low-cost LoRA ->
least KV. "Least" keeps pods in ``[min, min + (max - min) / N]``; the final pick is
random. Each step is soft: when it keeps nothing, the next step sees its input (as
upstream's ``nextOnSuccessOrFailure``). Raw metrics only (no in-flight accounting),
as upstream v0 had none. The fallbacks, which v0 did not have, are the rest of the
final set in random order, then the least-queued, least-KV pods of the group.
"""

from __future__ import annotations

import heapq

from .context import Context
from .filters import least_kv, least_queue, lora_low_cost, lora_soft_affinity
from .params import Params
from .plugin import Plugin, register
from .state import EndpointState

__all__ = ["DecisionTreeSelector"]


@register("decision-tree")
class DecisionTreeSelector(Plugin):
    """A selector plugin: it orders a group by itself, so its profile has no filters, scorers or picker."""

    def __init__(
        self,
        queue_critical: int = 5,
        kv_threshold: float = 0.8,
        lora_queue_threshold: int = 128,
        lora_affinity_probability: float = 0.999,
    ) -> None:
        self.queue_critical = queue_critical
        self.kv_threshold = kv_threshold
        self.lora_queue_threshold = lora_queue_threshold
        self.lora_affinity_probability = lora_affinity_probability

    @classmethod
    def from_params(cls, p: Params) -> DecisionTreeSelector:
        out = cls(
            queue_critical=p.integer("queue_critical", 5, lo=0),
            kv_threshold=p.number("kv_threshold", 0.8, lo=0.0, hi=1.0),
            lora_queue_threshold=p.integer("lora_queue_threshold", 128, lo=0),
            lora_affinity_probability=p.number("lora_affinity_probability", 0.999, lo=0.0, hi=1.0),
        )
        p.done()
        return out

    def final_set(self, ctx: Context, group: list[EndpointState]) -> list[EndpointState]:
        target = ctx.request.target_model
        if ctx.request.criticality == "Sheddable":
            q, kv = self.queue_critical, self.kv_threshold
            pods = [s for s in group if s.waiting <= q and s.kv <= kv] or group
            return least_kv(lora_low_cost(least_queue(pods), target))
        t = self.lora_queue_threshold
        low = [s for s in group if s.waiting < t]
        if low:
            aff = lora_soft_affinity(low, target, ctx.rng, self.lora_affinity_probability)
            return least_kv(least_queue(aff))
        return least_kv(lora_low_cost(least_queue(group), target))

    def select(self, ctx: Context, group: list[EndpointState], m: int) -> list[EndpointState]:
        final = self.final_set(ctx, group) or group
        chosen = ctx.rng.sample(final, min(m, len(final)))
        if len(chosen) < m and len(group) > len(chosen):
            taken = {id(s) for s in chosen}
            rest = [s for s in group if id(s) not in taken]
            chosen += heapq.nsmallest(m - len(chosen), rest, key=lambda s: (s.waiting, s.kv))
        return chosen
