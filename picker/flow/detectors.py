"""Saturation detectors: which of a request's candidate pods may take one more request now.

The flow controller asks before every dispatch. Both detectors answer with the pods that
have room (the request is then scheduled among those only: late binding with the
freshest view); an empty answer means the pool is saturated for that request and it
keeps waiting.

* :class:`UtilizationGate` (``utilization``, upstream's default): a pod is full when its
  queue is deeper than ``queue_depth``, its KV use above ``kv_cache``, or its metrics are
  older than ``staleness_ms``. Requests sent to the pod that its metrics do not show yet
  (from this replica or, through the shared view, any other) count as queued, so a burst
  between two scrapes does not all land on a pod that looked empty. **Band-aware**: while
  several priority bands or flows are active (``mixed=True``) a pod is full past
  ``mixed_queue_depth`` (1) instead: the pod's own queue is FCFS and knows no bands nor
  tenants, so a top-band (or light-tenant) request sent there waits behind whatever it holds;
  kept shallow, the backlog stays in the picker, in band and fairness order. With one band
  and one flow the two orders agree and the deeper queue keeps the pods fed.
* :class:`ConcurrencyGate` (``concurrency``): a pod is full when the requests, or the
  tokens, in flight on it (every replica's, from the shared in-flight view) reach the
  limit; and, pool-wide, when this replica's own requests on it reach its share of the
  limit (:class:`~picker.flow.pool.Shares`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from picker.scheduling.pool import PoolState
from picker.scheduling.state import EndpointState

__all__ = ["ConcurrencyGate", "Gate", "UtilizationGate", "build_gate"]


class Gate(Protocol):
    name: str

    def available(
        self, endpoints: Sequence[EndpointState], state: PoolState, mixed: bool = False
    ) -> list[EndpointState]:
        """The pods among ``endpoints`` that can take one more request now (``mixed``:
        several priority bands or flows are active)."""
        ...

    def saturation(self, endpoints: Sequence[EndpointState], state: PoolState) -> float:
        """0 (empty) .. 1 (every pod full): the pool-saturation gauge."""
        ...


class UtilizationGate:
    name = "utilization"

    def __init__(
        self,
        queue_depth: int = 5,
        kv_cache: float = 0.8,
        staleness_s: float = 0.2,
        mixed_queue_depth: int | None = None,
    ) -> None:
        self.queue_depth = queue_depth
        self.mixed_depth = queue_depth if mixed_queue_depth is None else mixed_queue_depth
        self.band_aware = self.mixed_depth != queue_depth
        self.kv_cache = kv_cache
        self.staleness_s = staleness_s

    def _stale(self, s: EndpointState, state: PoolState) -> bool:
        # fresh_until is the metrics' time plus the profile's staleness (-inf when failing).
        return state.now > s.fresh_until - state.thresholds.staleness + self.staleness_s

    def _room(self, s: EndpointState, state: PoolState, depth: int) -> bool:
        if self._stale(s, state):
            return False
        load = s.load
        return s.waiting + load.n <= depth and s.kv + load.tokens * s.inv_cap <= self.kv_cache

    def available(
        self, endpoints: Sequence[EndpointState], state: PoolState, mixed: bool = False
    ) -> list[EndpointState]:
        depth = self.mixed_depth if mixed else self.queue_depth
        return [s for s in endpoints if self._room(s, state, depth)]

    def saturation(self, endpoints: Sequence[EndpointState], state: PoolState) -> float:
        if not endpoints:
            return 1.0
        worst = 0.0
        total = 0.0
        for s in endpoints:
            if self._stale(s, state):
                total += 1.0
                continue
            q = (s.waiting + s.load.n) / max(1, self.queue_depth)
            kv = (s.kv + s.load.tokens * s.inv_cap) / max(1e-9, self.kv_cache)
            v = min(1.0, max(q, kv))
            total += v
            worst = max(worst, v)
        return total / len(endpoints)


class ConcurrencyGate:
    """Requests and/or tokens in flight per pod, counted over every replica.

    ``own`` gives this replica's open requests and tokens on a pod, ``share`` the fraction
    of each limit this replica may use (1.0 alone; from :class:`~picker.flow.pool.Shares`
    pool-wide). Both pod-wide and own limits must hold, so replicas whose shares sum to
    at most one can never push a pod over the limit together.
    """

    name = "concurrency"
    band_aware = False

    def __init__(
        self,
        max_requests: int = 0,
        max_tokens: int = 0,
        own: Callable[[str], tuple[int, int]] | None = None,
        share: Callable[[str, int], int] | None = None,
        token_share: Callable[[str], float] | None = None,
    ) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.own = own
        self.share = share
        self.token_share = token_share

    def _room(self, s: EndpointState, state: PoolState) -> bool:
        live = state.inflight.live(s.address)
        own_n, own_t = self.own(s.address) if self.own is not None else (0, 0)
        if self.max_requests:
            if live.n >= self.max_requests:
                return False
            if self.share is not None and own_n >= self.share(s.address, self.max_requests):
                return False
        if self.max_tokens:
            if live.tokens >= self.max_tokens:
                return False
            if self.token_share is not None and own_t >= self.max_tokens * self.token_share(s.address):
                return False
        return True

    def available(
        self, endpoints: Sequence[EndpointState], state: PoolState, mixed: bool = False
    ) -> list[EndpointState]:
        return [s for s in endpoints if self._room(s, state)]

    def saturation(self, endpoints: Sequence[EndpointState], state: PoolState) -> float:
        if not endpoints:
            return 1.0
        total = 0.0
        for s in endpoints:
            live = state.inflight.live(s.address)
            v = 0.0
            if self.max_requests:
                v = live.n / self.max_requests
            if self.max_tokens:
                v = max(v, live.tokens / self.max_tokens)
            total += min(1.0, v)
        return total / len(endpoints)


def build_gate(cfg, own=None, share=None, token_share=None) -> Gate:  # cfg: FlowConfig
    if cfg.detector == "concurrency":
        return ConcurrencyGate(cfg.max_requests_per_pod, cfg.max_tokens_per_pod, own, share, token_share)
    return UtilizationGate(cfg.queue_depth, cfg.kv_cache, cfg.staleness_ms / 1000.0, cfg.mixed_queue_depth)
