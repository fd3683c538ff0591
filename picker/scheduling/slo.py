"""SLO-aware routing on predicted latency: the ``slo-latency`` selector (profile ``predicted-latency``).

For each candidate the :class:`~picker.latency.LatencyPredictor` (learnt online from every
completion the replicas see) predicts the request's TTFT and TPOT there. The request's
SLO comes from its headers (``RequestInfo.slo_ttft_ms`` / ``slo_tpot_ms``: ``x-slo-ttft-ms``,
``x-slo-tpot-ms`` or llm-d's ``x-llm-d-slo-*``), else from the plugin's per-objective
defaults, else from its global defaults. Then:

* some pods are predicted to meet it (with ``margin`` to spare, inside the batch sizes
  their accelerator's model has seen: ``Prediction.trusted``, and under the pool's queue
  and KV saturation thresholds): with ``prefer: cost`` (the
  default) the **cheapest** of them (``cost_per_hour`` from the snapshot; unknown prices
  count as ``unknown_cost``), the one with the most headroom among equal prices; with
  ``prefer: headroom`` the one with the most headroom whatever it costs (fastest, for a
  pool whose price is fixed anyway); fallbacks follow in the same order;
* only pods outside their trusted batch sizes are: the least loaded of them (waiting +
  in-flight, then KV), which moves the frontier out as their outcomes come back;
* none is: a request whose criticality is in ``shed`` is rejected with 429 (reason
  header ``rejected-saturated``, body naming the SLO); any other is counted as a predicted
  violation and served: the objectives that no trusted pod can meet are dropped, and the
  trusted pod with the most headroom on what is left serves it (so a hopeless TPOT does
  not send every request to the pod that misses it least); with nothing left, the least
  predicted TTFT, trusted pods first;
* no SLO at all: the pod with the lowest predicted end-to-end latency
  (TTFT + TPOT x expected output tokens), trusted pods first;
* before the predictor has learnt (``min_samples`` completions): least waiting +
  in-flight requests, then least KV use, and nothing is rejected.

Headroom of a pod = min over the request's objectives of ``(slo - predicted) / slo``.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from picker.latency import LatencyPredictor

from .api import CRITICALITIES
from .context import Context
from .params import ConfigError, Params
from .plugin import Plugin, register
from .state import EndpointState

__all__ = ["PREFER", "SloLatencySelector"]

PREFER = ("cost", "headroom")


@register("slo-latency")
class SloLatencySelector(Plugin):
    def __init__(
        self,
        *,
        default_ttft_ms: float = 0.0,
        default_tpot_ms: float = 0.0,
        objectives: dict[str, tuple[float, float]] | None = None,
        margin: float = 0.1,
        shed: frozenset[str] = frozenset({"Sheddable"}),
        unknown_cost: float = 0.0,
        default_output_tokens: int = 200,
        predictor: LatencyPredictor | None = None,
        prefer: str = "cost",
    ) -> None:
        if prefer not in PREFER:
            raise ValueError(f"prefer must be one of {', '.join(PREFER)}")
        self.prefer = prefer
        self.default_ttft_ms = default_ttft_ms
        self.default_tpot_ms = default_tpot_ms
        self.objectives = dict(objectives or {})
        self.margin = margin
        self.shed = frozenset(shed)
        self.unknown_cost = unknown_cost
        self.default_output_tokens = default_output_tokens
        self.predictor = predictor or LatencyPredictor()

    def bind_state(self, state: Any) -> None:
        """Learn from the pool state's traffic (the config loader calls this once per profile)."""
        self.predictor.bind_state(state)

    # -- the request's SLO ----------------------------------------------------------------------

    def slo_of(self, request) -> tuple[float, float]:
        ttft, tpot = request.slo_ttft_ms, request.slo_tpot_ms
        if ttft > 0 and tpot > 0:
            return ttft, tpot
        d = self.objectives.get(request.objective) if request.objective else None
        dt, dp = d if d is not None else (self.default_ttft_ms, self.default_tpot_ms)
        return (ttft if ttft > 0 else dt), (tpot if tpot > 0 else dp)

    # -- selection --------------------------------------------------------------------------------

    def select(self, ctx: Context, group: list[EndpointState], m: int) -> list[EndpointState]:
        n = len(group)
        if not n:
            return []
        req = ctx.request
        prompt = max(0, req.prompt_tokens)
        unc = [prompt] * n
        if req.prefix_hashes:
            for i, blocks in ctx.prefix_hits(group):
                unc[i] = max(0, prompt - blocks * group[i].block_size)
        pred = self.predictor.predict(group, unc)
        if pred is None:  # warm-up: least requests ahead, then least KV
            idx = list(range(n))
            ctx.rng.shuffle(idx)
            idx.sort(key=lambda i: (group[i].waiting + group[i].load.n, group[i].kv))
            return [group[i] for i in idx[:m]]
        ttft, tpot = pred.ttft_ms, pred.tpot_ms
        s_ttft, s_tpot = self.slo_of(req)
        if s_ttft <= 0 and s_tpot <= 0:
            out = req.expected_output_tokens if req.expected_output_tokens > 0 else self.default_output_tokens
            e2e = [a + b * out for a, b in zip(ttft, tpot, strict=True)]
            tr = pred.trusted
            idx = sorted(range(n), key=lambda i: (not tr[i], e2e[i]))
            return [group[i] for i in idx[:m]]
        head, open_, meet, maybe = _classify(group, pred, s_ttft, s_tpot, self.margin)
        if meet:
            return [group[i] for i in self._prefer(group, meet, head, m)]
        if maybe:  # predicted to meet it only beyond what their models have seen: least loaded
            ctx.rng.shuffle(maybe)
            maybe.sort(key=lambda i: (group[i].waiting + group[i].load.n, group[i].kv))
            rest = sorted((i for i in range(n) if head[i] < self.margin), key=lambda i: -head[i])
            return [group[i] for i in (maybe + rest)[:m]]
        if req.criticality in self.shed:
            self.predictor.rejected += 1
            ctx.rejection = (
                429,
                f"no endpoint is predicted to meet the request's SLO ({_describe(s_ttft, s_tpot)})",
            )
            return []
        self.predictor.predicted_violations += 1
        # no prediction vouches for a saturated pod (see _classify)
        trusted = [t and o for t, o in zip(pred.trusted, open_, strict=True)]
        return [group[i] for i in self._overload(group, ttft, tpot, trusted, s_ttft, s_tpot, m)]

    def _prefer(self, group: list[EndpointState], meet: list[int], head: list[float], m: int) -> list[int]:
        """Order the pods meeting the SLO (cheapest or most headroom first), then the rest by headroom."""
        if self.prefer == "cost":
            uc = self.unknown_cost

            def key(i: int) -> tuple[float, float]:
                return (group[i].snap.cost_per_hour or uc, -head[i])
        else:

            def key(i: int) -> float:
                return -head[i]

        # the first m only (a primary and its fallbacks): no full sort (the decision budget)
        chosen = heapq.nsmallest(m, meet, key=key) if m < len(meet) else sorted(meet, key=key)
        if len(chosen) < m:
            taken = set(chosen)
            rest = (i for i in range(len(group)) if i not in taken)
            chosen += heapq.nsmallest(m - len(chosen), rest, key=lambda i: -head[i])
        return chosen

    def _overload(
        self,
        group: list[EndpointState],
        ttft: list[float],
        tpot: list[float],
        trusted: list[bool],
        s_ttft: float,
        s_tpot: float,
        m: int,
    ) -> list[int]:
        """No pod meets the whole SLO: meet what can still be met, and spread the rest.

        An objective that no trusted pod is predicted to meet is dropped (it is lost
        wherever the request goes, and ranking by it would send every request to the one
        class of pod that misses it least: the DES showed the H100s taking all of an
        overload, queueing to a 1-s TTFT, while the TPOT was missed everywhere anyway);
        of the trusted pods meeting what is left, the one with the most headroom (price
        no longer decides: the request is a violation already, and the cheapest pods are
        the ones already at their limit). If nothing is left: the least predicted TTFT,
        trusted pods first, so the overload spreads over the pool instead of piling onto
        the fastest class.
        """
        n = len(group)
        keep = 1.0 - self.margin
        if s_ttft > 0 and not any(trusted[i] and ttft[i] <= s_ttft * keep for i in range(n)):
            s_ttft = 0.0
        if s_tpot > 0 and not any(trusted[i] and tpot[i] <= s_tpot * keep for i in range(n)):
            s_tpot = 0.0
        if s_ttft > 0 or s_tpot > 0:
            head = _headroom(ttft, tpot, s_ttft, s_tpot)
            meet = [i for i in range(n) if head[i] >= self.margin and trusted[i]]
            if meet:  # a violation whatever it costs: the most headroom on what is left
                return heapq.nsmallest(m, meet, key=lambda i: -head[i])
            idx = sorted(range(n), key=lambda i: (not trusted[i], -head[i]))
            return idx[:m]
        idx = sorted(range(n), key=lambda i: (not trusted[i], ttft[i]))
        return idx[:m]

    # -- config ---------------------------------------------------------------------------------

    @classmethod
    def from_params(cls, p: Params) -> SloLatencySelector:
        shed_raw = p.raw("shed", ["Sheddable"])
        if not isinstance(shed_raw, list) or any(c not in CRITICALITIES for c in shed_raw):
            raise ConfigError(p.field("shed"), f"must be a list of {', '.join(CRITICALITIES)}")
        if "Critical" in shed_raw:
            raise ConfigError(p.field("shed"), "Critical requests are never shed")
        prefer = p.raw("prefer", "cost")
        if prefer not in PREFER:
            raise ConfigError(p.field("prefer"), f"must be one of {', '.join(PREFER)}")
        objectives: dict[str, tuple[float, float]] = {}
        raw = p.raw("objectives", {}) or {}
        if not isinstance(raw, dict):
            raise ConfigError(
                p.field("objectives"), "must be a mapping of objective name to {ttft_ms, tpot_ms}"
            )
        for name, v in raw.items():
            sub = Params(v, f"{p.field('objectives')}.{name}")
            objectives[str(name)] = (sub.number("ttft_ms", 0.0, lo=0.0), sub.number("tpot_ms", 0.0, lo=0.0))
            sub.done()
        out = cls(
            default_ttft_ms=p.number("default_ttft_ms", 0.0, lo=0.0),
            default_tpot_ms=p.number("default_tpot_ms", 0.0, lo=0.0),
            objectives=objectives,
            margin=p.number("margin", 0.1, lo=0.0, hi=0.9),
            shed=frozenset(shed_raw),
            unknown_cost=p.number("unknown_cost", 0.0, lo=0.0),
            default_output_tokens=p.integer("default_output_tokens", 200, lo=1),
            prefer=prefer,
            predictor=LatencyPredictor(
                min_samples=p.integer("min_samples", 30, lo=1),
                forgetting=p.number("forgetting", 0.998, lo=0.9, hi=1.0),
            ),
        )
        return out


def _classify(
    group: list[EndpointState], pred, s_ttft: float, s_tpot: float, margin: float
) -> tuple[list[float], list[bool], list[int], list[int]]:
    """One pass over the group: headroom, unsaturated, and who is predicted to meet the SLO.

    Returns ``(head, open, meet, maybe)``: each pod's headroom (``_headroom``); whether it
    is under the pool's queue and KV thresholds with its in-flight work (its
    ``queue_room`` and ``kv_room``); the pods with ``margin`` headroom that are trusted
    and open (``meet``), and those with the headroom that are open but outside their
    trusted batch sizes (``maybe``).

    A pod past the pool's saturation thresholds is at its admission limit: its TTFT is set
    by departures, which a linear model of the work ahead does not see, and under
    sustained load it grows without bound (the DES: the H100s, fed until their queues
    formed, went from 70 ms to 800 ms TTFT in ten seconds). No prediction vouches for such
    a pod. One fused loop because this runs for every candidate of every decision.
    """
    # headroom inline (as _headroom computes it): an objective that is not set never binds
    inf = math.inf
    it = 1.0 / s_ttft if s_ttft > 0 else 0.0
    ip = 1.0 / s_tpot if s_tpot > 0 else 0.0
    head: list[float] = []
    open_: list[bool] = []
    meet: list[int] = []
    maybe: list[int] = []
    add_h, add_o = head.append, open_.append
    for i, (st, a, b, tr) in enumerate(zip(group, pred.ttft_ms, pred.tpot_ms, pred.trusted, strict=True)):
        h = (s_ttft - a) * it if it else inf
        if ip:
            h2 = (s_tpot - b) * ip
            if h2 < h:
                h = h2
        add_h(h)
        load = st.load
        o = load.n <= st.queue_room and load.tokens <= st.kv_room
        add_o(o)
        if o and h >= margin:
            (meet if tr else maybe).append(i)
    return head, open_, meet, maybe


def _headroom(ttft: list[float], tpot: list[float], s_ttft: float, s_tpot: float) -> list[float]:
    if s_ttft > 0 and s_tpot > 0:
        it, ip = 1.0 / s_ttft, 1.0 / s_tpot
        return [min((s_ttft - a) * it, (s_tpot - b) * ip) for a, b in zip(ttft, tpot, strict=True)]
    if s_ttft > 0:
        it = 1.0 / s_ttft
        return [(s_ttft - a) * it for a in ttft]
    ip = 1.0 / s_tpot
    return [(s_tpot - b) * ip for b in tpot]


def _describe(s_ttft: float, s_tpot: float) -> str:
    parts = []
    if s_ttft > 0:
        parts.append(f"TTFT {_fmt(s_ttft)} ms")
    if s_tpot > 0:
        parts.append(f"TPOT {_fmt(s_tpot)} ms")
    return ", ".join(parts)


def _fmt(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"
