"""Scorers: each maps a group of endpoints to scores in [0, 1], higher is better.

A scorer returns one float per endpoint of the group, in the group's order, or
``None`` when every endpoint would get the same score (the weighted sum then skips it:
a constant adds nothing to a ranking, and skipping it saves a pass over the group).
"""

from __future__ import annotations

from collections.abc import Sequence

from .context import Context
from .params import Params
from .plugin import Plugin, register
from .state import EndpointState

__all__ = [
    "ExpectedWorkScorer",
    "InflightScorer",
    "KVCacheScorer",
    "LoraAffinityScorer",
    "PrefixAffinityScorer",
    "PrefixCacheScorer",
    "QueueScorer",
    "Scorer",
]

Group = Sequence[EndpointState]

# Data key: the expected-work scores of a group (None when all equal), for load-gated scorers.
WORK_SCORES = "expected-work"


class Scorer(Plugin):
    """Base class: ``score`` must return ``len(group)`` floats in [0, 1], or ``None`` for uniform.

    A profile references a scorer with a ``weight``; the totals are the weighted sums.
    """

    def score(self, ctx: Context, group: Group) -> list[float] | None:  # pragma: no cover - abstract
        raise NotImplementedError


def _minmax_low_is_best(values: list[float], floor: float = 0.0) -> list[float] | None:
    """``(max - v) / max(max - min, floor)``; ``None`` (all 1) when every value is equal."""
    lo = min(values)
    hi = max(values)
    if hi == lo:
        return None
    span = hi - lo
    if span < floor:
        span = floor
    return [(hi - v) / span for v in values]


@register("queue")
class QueueScorer(Scorer):
    """Fewer waiting requests is better: ``(max - q) / (max - min)``, 1 when all equal.

    ``q`` is the pod's reported ``waiting``, plus, with ``include_inflight``, the requests
    sent to it since its last snapshot (upstream v1 has no such term).
    """

    def __init__(self, include_inflight: bool = True) -> None:
        self.include_inflight = include_inflight

    def score(self, ctx: Context, group: Group) -> list[float] | None:
        qs = [s.waiting + s.load.n for s in group] if self.include_inflight else [s.waiting for s in group]
        return _minmax_low_is_best(qs)  # type: ignore[arg-type]

    @classmethod
    def from_params(cls, p: Params) -> QueueScorer:
        out = cls(include_inflight=p.boolean("include_inflight", True))
        p.done()
        return out


@register("kv-cache")
class KVCacheScorer(Scorer):
    """Free KV cache is better: ``1 - usage`` (with in-flight tokens added, when asked)."""

    def __init__(self, include_inflight: bool = True) -> None:
        self.include_inflight = include_inflight

    def score(self, ctx: Context, group: Group) -> list[float] | None:
        if self.include_inflight:
            out = [1.0 - s.kv - s.load.tokens * s.inv_cap for s in group]
            return [v if v > 0.0 else 0.0 for v in out]
        return [1.0 - s.kv for s in group]

    @classmethod
    def from_params(cls, p: Params) -> KVCacheScorer:
        out = cls(include_inflight=p.boolean("include_inflight", True))
        p.done()
        return out


def serves_base(state: EndpointState, target: str) -> bool:
    """Does ``target`` name the base model this endpoint serves (not a LoRA adapter)?"""
    if state.model:
        return target == state.model
    # The server did not report its model: a server without LoRA slots can only be
    # serving base-model requests.
    return state.max_lora == 0 and target not in state.lora_running and target not in state.lora_waiting


def lora_affinity(state: EndpointState, target: str) -> float:
    """1.0 adapter running (or a base-model request), 0.8 a free slot, 0.6 waiting, else 0."""
    if target in state.lora_running or serves_base(state, target):
        return 1.0
    if state.lora_slots_free:
        return 0.8
    if target in state.lora_waiting:
        return 0.6
    return 0.0


@register("lora-affinity")
class LoraAffinityScorer(Scorer):
    """Prefer pods where the request's adapter is already loaded, then pods that can load it."""

    def score(self, ctx: Context, group: Group) -> list[float] | None:
        target = ctx.request.target_model
        bm = ctx.base_models
        if len(bm) == 1 and target in bm:  # one base model in the pool and this is it
            return None
        if target not in bm and "" not in bm:
            # An adapter (no endpoint serves it as its base model): lora_affinity() inlined.
            return [
                1.0
                if target in s.lora_running
                else (0.8 if s.lora_slots_free else (0.6 if target in s.lora_waiting else 0.0))
                for s in group
            ]
        # lora_affinity() inlined for endpoints that report their model (the hot path).
        return [
            (1.0 if target in s.lora_running or s.model == target else lora_affinity(s, target))
            if s.model
            else lora_affinity(s, target)
            for s in group
        ]


@register("prefix-cache")
class PrefixCacheScorer(Scorer):
    """Longest prefix of the request's blocks the pod probably caches / the request's blocks."""

    def score(self, ctx: Context, group: Group) -> list[float] | None:
        hashes = ctx.request.prefix_hashes
        if not hashes:
            return None
        hits = ctx.prefix_hits(group)
        if not hits:
            return None
        inv_total = 1.0 / len(hashes)
        out = [0.0] * len(group)
        for i, m in hits:
            out[i] = m * inv_total
        return out


@register("prefix-affinity")
class PrefixAffinityScorer(Scorer):
    """The prefix-cache score gated by load: ``matched fraction x expected-work score``.

    A prefix hit is worth most on a pod that also has room; on the busiest pod it is
    worth nothing, so a hot prefix (one system prompt for every request) spreads over
    the pool instead of herding, while many small prefix groups keep their affinity.
    Consumes the ``expected-work`` scores of the same group (the loader runs the
    profile's expected-work scorer first, or refuses a profile without one); should that
    scorer fail on a decision, it is the plain prefix-cache score.
    """

    consumes = frozenset({WORK_SCORES})

    def score(self, ctx: Context, group: Group) -> list[float] | None:
        hashes = ctx.request.prefix_hashes
        if not hashes:
            return None
        hits = ctx.prefix_hits(group)
        if not hits:
            return None
        inv_total = 1.0 / len(hashes)
        known, work = ctx.get(WORK_SCORES, group)
        out = [0.0] * len(group)
        if not known:
            for i, m in hits:
                out[i] = m * inv_total
        elif work is not None:
            for i, m in hits:
                out[i] = m * inv_total * work[i]
        else:  # every pod equally loaded: the gate is 1 everywhere
            for i, m in hits:
                out[i] = m * inv_total
        return out


@register("inflight")
class InflightScorer(Scorer):
    """Fewer requests sent since the last snapshot is better (min-max, like the queue scorer)."""

    def score(self, ctx: Context, group: Group) -> list[float] | None:
        return _minmax_low_is_best([s.load.n for s in group])  # type: ignore[arg-type]


@register("expected-work")
class ExpectedWorkScorer(Scorer):
    """InferGate's load estimate: the pod's token demand after this request, as a share of its KV.

    ``demand = kv_usage + (waiting * avg_tokens + inflight_tokens + own_tokens) / capacity``

    * ``kv_usage`` is what the pod holds (it slows every decode step);
    * ``waiting`` is priced at the running mean request size, since metrics give no sizes;
    * ``inflight_tokens`` are the uncached prompt + expected output tokens of requests sent
      since the last snapshot (so bursts between scrapes spread out);
    * ``own_tokens`` is this request's prompt *minus the prefix the pod probably caches*,
      plus its expected output: a cache hit is a saving in the same unit as load, so a hot
      prefix stays on its pod only while that pod is not busier than the saving is worth.

    Scored ``(max - d) / max(max - min, floor)``: the ``floor`` (a share of KV capacity)
    keeps differences smaller than it from swinging the whole [0, 1] range, so near-equal
    pods are left to the other scorers (prefix, LoRA) instead of to noise.

    Produces its scores of each group (``expected-work``) for load-gated scorers.
    """

    produces = frozenset({WORK_SCORES})

    def __init__(
        self,
        floor: float = 0.02,
        default_output_tokens: int = 200,
        prompt_weight: float = 1.0,
        kv_weight: float = 1.0,
    ) -> None:
        self.floor = floor
        self.kv_weight = kv_weight
        self.default_output_tokens = default_output_tokens
        self.prompt_weight = prompt_weight

    def score(self, ctx: Context, group: Group) -> list[float] | None:
        req = ctx.request
        prompt = req.prompt_tokens if req.prompt_tokens > 0 else 0
        out = req.expected_output_tokens if req.expected_output_tokens > 0 else self.default_output_tokens
        pw = self.prompt_weight
        kw = self.kv_weight
        own = prompt * pw + out
        ds = [kw * s.kv + s.queue_demand + (s.load.tokens + own) * s.inv_cap for s in group]
        if req.prefix_hashes:
            # A cached prefix is prefill the pod will not redo: only the rest of the prompt counts.
            for i, m in ctx.prefix_hits(group):
                s = group[i]
                saved = m * s.block_size
                ds[i] -= pw * (saved if saved < prompt else prompt) * s.inv_cap
        scores = _minmax_low_is_best(ds, self.floor)
        ctx.put(WORK_SCORES, group, scores)
        return scores

    @classmethod
    def from_params(cls, p: Params) -> ExpectedWorkScorer:
        out = cls(
            floor=p.number("floor", 0.02, lo=0.0, hi=10.0),
            default_output_tokens=p.integer("default_output_tokens", 200, lo=0),
            prompt_weight=p.number("prompt_weight", 1.0, lo=0.0),
            kv_weight=p.number("kv_weight", 1.0, lo=0.0),
        )
        p.done()
        return out
