"""Online TTFT / TPOT prediction per endpoint, learnt from the completions every replica sees.

:class:`LatencyPredictor` is a pool-state observer (``PoolState.observers``): every
assignment (this replica's and its peers', through the shared view) records the features
of the chosen pod *before* the request is counted, and the prediction made then; every
completion with an outcome (TTFT, end-to-end latency, output tokens) trains the model of
that pod's accelerator and scores the prediction (MAPE). No sidecar: the data is already
in every replica, so every replica learns the same model from the same traffic.

Models: one pair of :class:`~.rls.OnlineRegression` (TTFT, TPOT) per accelerator (the
snapshot's ``accelerator``; "" for unlabelled pods), and a pooled pair trained on every
sample that answers for an accelerator with fewer than ``min_samples`` samples of its own.
Until the pooled model has ``min_samples`` either, :meth:`predict` returns ``None`` and
callers fall back to load-based ordering.

Trust: a prediction is *trusted* only inside the batch sizes the pod's accelerator has been
seen to serve (its own model, ``trust_growth`` x the largest batch among its training
samples, plus ``trust_slack`` requests). Outcomes arrive at completion, seconds after the
decision; a model fitted at one load extrapolates a linear law into a regime it never saw,
and a selector that sends every request to the cheapest pod "predicted" to meet the SLO
would pile the whole pool onto it before the first contradicting sample came back (the
DES showed exactly this: an A100 class predicted at 120 ms TTFT while serving 800 ms).
The frontier moves out as samples from larger batches arrive, so the herd grows by at most
``trust_growth`` per feedback delay.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .features import D_TPOT, D_TTFT, TPOT_NONNEG, TTFT_NONNEG, tpot_features, ttft_features
from .rls import OnlineRegression

if TYPE_CHECKING:  # picker.scheduling imports this package (its slo-latency plugin)
    from picker.scheduling.api import RequestInfo
    from picker.scheduling.state import EndpointState

__all__ = ["LatencyPredictor", "Prediction"]

MIN_TTFT_MS = 1.0
MIN_TPOT_MS = 0.1


@dataclass(slots=True)
class _Pending:
    accel: str
    x_ttft: list[float]
    x_tpot: list[float]
    pred_ttft: float  # ms, 0 = no prediction at the time
    pred_tpot: float
    slo_ttft: float
    slo_tpot: float
    at: float


@dataclass
class Prediction:
    ttft_ms: list[float]
    tpot_ms: list[float]
    trusted: list[bool] = field(default_factory=list)  # inside the accelerator's seen batch sizes


@dataclass
class _Errors:
    """Absolute percentage errors of recent predictions (bounded window) and lifetime sums."""

    window: deque = field(default_factory=lambda: deque(maxlen=2000))
    total: float = 0.0
    n: int = 0

    def add(self, pred: float, actual: float) -> None:
        if actual <= 0:
            return
        ape = abs(pred - actual) / actual
        self.window.append(ape)
        self.total += ape
        self.n += 1

    def mape(self) -> float:
        w = self.window
        return sum(w) / len(w) if w else 0.0


class LatencyPredictor:
    def __init__(
        self,
        *,
        min_samples: int = 30,
        forgetting: float = 0.998,
        max_pending: int = 100_000,
        pending_ttl_s: float = 600.0,
        max_accelerators: int = 64,
        relative: bool = True,
        trust_growth: float = 1.25,
        trust_slack: int = 2,
    ) -> None:
        self.min_samples = min_samples
        self.forgetting = forgetting
        self.max_pending = max_pending
        self.pending_ttl_s = pending_ttl_s
        self.max_accelerators = max_accelerators
        self.relative = relative
        self.trust_growth = trust_growth
        self.trust_slack = trust_slack * 0.1  # in the batch feature's unit (tens of requests)
        # largest batch feature (x_ttft[2]) among each accelerator's training samples
        self.frontier: dict[str, float] = {}
        self.models: dict[str, tuple[OnlineRegression, OnlineRegression]] = {}
        self.pooled = self._pair()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self.errors = {"ttft": _Errors(), "tpot": _Errors()}
        self.errors_by_accel: dict[str, dict[str, _Errors]] = {}
        # outcome counters: (objective, "met" | "missed") -> requests; and the requests that
        # no endpoint was predicted to meet (routed anyway, or rejected when sheddable)
        self.slo_outcomes: dict[tuple[str, str], int] = {}
        self.predicted_violations = 0
        self.rejected = 0
        self.dropped_pending = 0
        self.samples = 0

    def _pair(self) -> tuple[OnlineRegression, OnlineRegression]:
        lam = self.forgetting
        # Relative fitting divides each row by its target (~10-1,000 ms), so the prior has to
        # be that much weaker to stay as uninformative as it is for a plain fit.
        pv = 1e6 if self.relative else 1e4
        return (
            OnlineRegression(D_TTFT, lam, prior_var=pv, nonneg=TTFT_NONNEG),
            OnlineRegression(D_TPOT, lam, prior_var=pv, nonneg=TPOT_NONNEG),
        )

    def bind_state(self, state) -> LatencyPredictor:
        """Observe ``state`` (a :class:`~picker.scheduling.pool.PoolState`); idempotent."""
        if self not in state.observers:
            state.observers.append(self)
        return self

    # -- which model answers ------------------------------------------------------------------

    def _model(self, accel: str) -> tuple[OnlineRegression, OnlineRegression] | None:
        m = self.models.get(accel)
        if m is not None and m[0].n >= self.min_samples:
            return m
        if self.pooled[0].n >= self.min_samples:
            return self.pooled
        return None

    @property
    def ready(self) -> bool:
        return self.pooled[0].n >= self.min_samples

    # -- prediction (the hot path) ------------------------------------------------------------

    def predict(self, group: Sequence[EndpointState], uncached: Sequence[int]) -> Prediction | None:
        """TTFT and TPOT in ms for the request on each endpoint of ``group``; None before warm-up.

        ``uncached[i]``: the request's prompt tokens not in endpoint i's prefix cache.
        """
        if not self.ready:
            return None
        # Per accelerator: the weights with the features' units folded in, and the trusted
        # batch in requests. One loop over the group, no feature lists (the decision budget).
        weights: dict[str, tuple[float, ...]] = {}
        ttft: list[float] = []
        tpot: list[float] = []
        trusted: list[bool] = []
        add_a, add_b, add_t = ttft.append, tpot.append, trusted.append
        for st, u in zip(group, uncached, strict=True):
            w = weights.get(st.accelerator)
            if w is None:
                w = weights[st.accelerator] = self._folded(st.accelerator)
            a0, a1, a2, b0, b1, b2, limit = w
            load = st.load
            ln = load.n
            lt = load.tokens
            r = st.running + ln
            add_t(r <= limit)
            t = a0 + a1 * (st.queued_tokens + lt + u) + a2 * r
            add_a(t if t > MIN_TTFT_MS else MIN_TTFT_MS)
            d = b0 + b1 * (r + st.waiting) + b2 * (st.kv_tokens + lt)
            add_b(d if d > MIN_TPOT_MS else MIN_TPOT_MS)
        return Prediction(ttft, tpot, trusted)

    def _folded(self, accel: str) -> tuple[float, ...]:
        """``accel``'s weights per raw unit (tokens, requests) and its trusted batch in requests."""
        m = self._model(accel) or self.pooled
        own = self.models.get(accel)
        limit = -1.0  # no model of its own yet: nothing about this hardware is known
        if own is not None and own[0].n >= self.min_samples:
            limit = (self.frontier.get(accel, 0.0) * self.trust_growth + self.trust_slack) * 10.0
        a, b = m[0].w, m[1].w
        return (a[0], a[1] * 1e-3, a[2] * 0.1, b[0], b[1] * 0.1, b[2] * 1e-4, limit)

    # -- learning (pool-state observer) ------------------------------------------------------

    def on_assigned(
        self,
        request: RequestInfo,
        address: str,
        st: EndpointState | None,
        cached: int,
        now: float,
        replica: str,
    ) -> None:
        """Record the chosen pod's features before the request is counted (``cached``: prefix tokens)."""
        if st is None:
            return
        uncached = max(0, request.prompt_tokens - cached)
        xa = ttft_features(st, uncached)
        xb = tpot_features(st)
        accel = st.accelerator
        m = self._model(accel)
        pa = max(MIN_TTFT_MS, m[0].predict(xa)) if m else 0.0
        pb = max(MIN_TPOT_MS, m[1].predict(xb)) if m else 0.0
        pend = self._pending
        key = (replica, request.request_id)
        pend.pop(key, None)
        pend[key] = _Pending(accel, xa, xb, pa, pb, request.slo_ttft_ms, request.slo_tpot_ms, now)
        if len(pend) > self.max_pending:
            pend.pop(next(iter(pend)))
            self.dropped_pending += 1
        # expire lost completions (oldest first: the dict keeps insertion order)
        while pend:
            first = next(iter(pend.values()))
            if now - first.at <= self.pending_ttl_s:
                break
            pend.pop(next(iter(pend)))
            self.dropped_pending += 1

    def on_completed(
        self,
        request_id: str,
        replica: str,
        status: int,
        ttft_s: float,
        latency_s: float,
        output_tokens: int,
        now: float,
    ) -> None:
        p = self._pending.pop((replica, request_id), None)
        if p is None or status != 200 or ttft_s <= 0 or latency_s <= 0:
            return  # failed, cancelled, or no timing (non-streaming responses have no TTFT)
        ttft_ms = ttft_s * 1e3
        tpot_ms = (latency_s - ttft_s) * 1e3 / (output_tokens - 1) if output_tokens > 1 else 0.0
        by = self.errors_by_accel.get(p.accel)
        if by is None and len(self.errors_by_accel) < self.max_accelerators:
            by = self.errors_by_accel[p.accel] = {"ttft": _Errors(), "tpot": _Errors()}
        if p.pred_ttft:
            self.errors["ttft"].add(p.pred_ttft, ttft_ms)
            if by is not None:
                by["ttft"].add(p.pred_ttft, ttft_ms)
        if p.pred_tpot and tpot_ms > 0:
            self.errors["tpot"].add(p.pred_tpot, tpot_ms)
            if by is not None:
                by["tpot"].add(p.pred_tpot, tpot_ms)
        if p.slo_ttft:
            self._outcome("ttft", ttft_ms <= p.slo_ttft)
        if p.slo_tpot and tpot_ms > 0:
            self._outcome("tpot", tpot_ms <= p.slo_tpot)
        m = self.models.get(p.accel)
        if m is None:
            if len(self.models) >= self.max_accelerators:
                m = self.pooled  # bounded: operator-set names, but never unbounded
            else:
                m = self.models[p.accel] = self._pair()
        self.samples += 1
        if m is not self.pooled and p.x_ttft[2] > self.frontier.get(p.accel, -1.0):
            self.frontier[p.accel] = p.x_ttft[2]
        rel = self.relative
        sa = 1.0 / ttft_ms if rel else 1.0
        m[0].update(p.x_ttft, ttft_ms, sa)
        if m is not self.pooled:
            self.pooled[0].update(p.x_ttft, ttft_ms, sa)
        if tpot_ms > 0:
            sb = 1.0 / tpot_ms if rel else 1.0
            m[1].update(p.x_tpot, tpot_ms, sb)
            if m is not self.pooled:
                self.pooled[1].update(p.x_tpot, tpot_ms, sb)

    def _outcome(self, objective: str, met: bool) -> None:
        key = (objective, "met" if met else "missed")
        self.slo_outcomes[key] = self.slo_outcomes.get(key, 0) + 1

    # -- reporting ------------------------------------------------------------------------------

    def mape(self, kind: str = "ttft", accel: str | None = None) -> float:
        """Mean absolute percentage error of the recent predictions (0..; 0.1 = 10%)."""
        if accel is None:
            return self.errors[kind].mape()
        by = self.errors_by_accel.get(accel)
        return by[kind].mape() if by else 0.0

    @property
    def pending(self) -> int:
        return len(self._pending)
