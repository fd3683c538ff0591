"""The flow controller: queue, order and dispatch requests between admission and scheduling.

Clock-free and synchronous, so the asyncio driver (:mod:`.runner`) behind Envoy and the
discrete-event simulation run the same code. A request comes in through :meth:`submit`:

* no candidate endpoint -> 503 ``rejected-no-endpoints``, unless the pool has no ready
  endpoint at all and ``scale_from_zero_ttl_s`` > 0: then it waits for one;
* nothing queued at its priority or above and a pod with room (the gate) -> scheduled at
  once among the pods with room (the fast path: no queueing cost when not saturated);
* else queued in its priority's band (429 ``rejected-saturated`` when the band is full).

:meth:`pump` dispatches what can go: bands strictly by priority, the band's fairness policy
between its flows, the ordering policy inside a flow; each request is scheduled at the
moment it leaves, among the pods the gate says have room, on the freshest view (late
binding). The first request that cannot go (no pod with room) stops the pump: a lower
band never overtakes a higher one. Expired requests leave with 429 ``rejected-ttl-expired``
(503 when still no endpoint: a scale from zero that did not come).

With a band-aware detector (``mixed_queue_depth``), requests are gated by the smaller depth
while the traffic is *mixed*: several priority bands active (submitted here in the last
:data:`ACTIVE_WINDOW_S`, or waiting at a peer), or several flows (fairness ids).

When the highest priority waiting here rises (:meth:`top` goes up on a submit), the
controller calls ``on_top_rise``: the pool-wide coordinator publishes at once instead of
on its next tick, so the peers hold their lower bands back without a 100-ms lag.

Each queued request carries a *waiter* (``dispatch(decision, info)``, ``reject(status,
reason, dropped)``): the caller's way to learn the outcome. :meth:`cancel` removes one at
once (the client went away).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

from picker.scheduling.api import Decision, RequestInfo, Scheduler
from picker.scheduling.pool import PoolState

from .config import FlowConfig
from .detectors import Gate, build_gate
from .fairness import AttainedService
from .queues import Band, Item

__all__ = ["NO_ENDPOINTS", "SATURATED", "TTL_EXPIRED", "FlowController", "Outcome", "Waiter"]

SATURATED = "rejected-saturated"
NO_ENDPOINTS = "rejected-no-endpoints"
TTL_EXPIRED = "rejected-ttl-expired"
ACTIVE_WINDOW_S = 10.0  # a priority submitted this recently is an active band (band-aware gate)
MAX_TRACKED_PRIORITIES = 64  # priorities come from configured objectives; bounded anyway


class Outcome:
    """Upstream's queue outcomes (the ``outcome`` label of the queue-duration histogram)."""

    DISPATCHED = "Dispatched"
    REJECTED_CAPACITY = "RejectedCapacity"
    REJECTED_OTHER = "RejectedOther"
    EVICTED_TTL = "EvictedTTL"
    EVICTED_CANCELLED = "EvictedContextCancelled"


class Waiter(Protocol):
    def dispatch(self, decision: Decision, info: RequestInfo) -> None: ...

    def reject(self, status: int, reason: str, dropped: str) -> None: ...


class _NoMetrics:
    def outcome(self, priority: int, outcome: str, seconds: float) -> None:
        pass

    def cycle(self, seconds: float) -> None:
        pass


class FlowController:
    def __init__(
        self,
        cfg: FlowConfig,
        scheduler: Scheduler,
        state: PoolState,
        *,
        gate: Gate | None = None,
        metrics: Any = None,
        service: AttainedService | None = None,
        own_load: Callable[[str], tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        peer_top: Callable[[], int | None] | None = None,
        on_top_rise: Callable[[], None] | None = None,
        replicas: Callable[[], int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.scheduler = scheduler
        self.state = state
        self.gate = gate or build_gate(cfg)
        self.metrics = metrics or _NoMetrics()
        self.service = service or AttainedService(cfg.las_half_life_s, cfg.las_output_weight)
        self.clock = clock  # for the dispatch-cycle histogram only
        # Pool-wide: the highest priority a peer replica has waiting (None: none / alone).
        self.peer_top = peer_top
        self.on_top_rise = on_top_rise
        # Pool-wide: the replicas alive (the band bounds are the pool's: each keeps 1/n).
        self.replicas = replicas
        self._seen: dict[int, float] = {}  # priority -> last submit (the band-aware gate)
        self._last_flow: str | None = None
        self._other_flow_at = -1e18  # last submit of a flow other than the one before it
        self.bands: dict[int, Band] = {}
        self._order: list[Band] = []  # highest priority first
        self.queued = 0
        self.by_model: dict[str, int] = {}  # target model -> queued (the autoscaler's metric)
        self.last_saturation = 0.0

    # -- state ------------------------------------------------------------------------------
    def band(self, priority: int) -> Band:
        b = self.bands.get(priority)
        if b is None:
            cfg = self.cfg
            b = self.bands[priority] = Band(
                priority,
                fairness=cfg.fairness,
                ordering=cfg.ordering,
                max_requests=cfg.max_requests_per_band,
                max_bytes=cfg.max_bytes_per_band,
                max_flows=cfg.max_flows_per_band,
                service=self.service.value,
            )
            self._order = sorted(self.bands.values(), key=lambda x: -x.priority)
        return b

    def _any_ready(self) -> bool:
        """Some endpoint of the pool is ready: an empty candidate set is then the request's own (503)."""
        st = self.state
        return any(s is not None and s.ok for s in map(st.endpoint_state, list(st.endpoints)))

    def top(self) -> int | None:
        """The highest priority with something waiting here (published to the peers)."""
        for b in self._order:
            if b.size:
                return b.priority
        return None

    def _saw(self, priority: int, now: float) -> None:
        seen = self._seen
        if priority not in seen and len(seen) >= MAX_TRACKED_PRIORITIES:
            del seen[min(seen, key=seen.__getitem__)]  # the stalest
        seen[priority] = now

    def active_bands(self, now: float) -> set[int]:
        """The priorities submitted here within :data:`ACTIVE_WINDOW_S`, and a live peer's top waiting one."""
        out = {p for p, at in self._seen.items() if now - at <= ACTIVE_WINDOW_S}
        if self.peer_top is not None:
            peer = self.peer_top()
            if peer is not None:
                out.add(peer)
        return out

    def _mixed(self, now: float) -> bool:
        """Several bands, or several flows, submitted within :data:`ACTIVE_WINDOW_S`."""
        if not getattr(self.gate, "band_aware", False):
            return False
        return now - self._other_flow_at <= ACTIVE_WINDOW_S or len(self.active_bands(now)) > 1

    def _held(self, priority: int) -> bool:
        """A peer waits with a higher priority: leave the next free slot to it."""
        if self.peer_top is None:
            return False
        top = self.peer_top()
        return top is not None and top > priority

    def queued_demand(self) -> int:
        """The queued requests this replica claims capacity for (pool-wide shares).

        Zero while a peer waits with a higher priority: this replica holds its bands back
        for it (:meth:`_held`), so claiming a share of the pods' limits for them would only
        starve the peer whose request goes first (with a limit of one per pod, a replica
        with three low requests would otherwise get every pod's slot and hold them all).
        """
        top = self.top()
        if top is None or self._held(top):
            return 0
        return self.queued

    def _waiting_at_or_above(self, priority: int) -> bool:
        if self._held(priority):
            return True
        for b in self._order:
            if b.priority < priority:
                return False
            if b.size:
                return True
        return False

    # -- entry --------------------------------------------------------------------------------
    def submit(
        self,
        info: RequestInfo,
        size: int,
        now: float,
        waiter: Waiter,
        slo_ttft_s: float | None = None,
    ) -> Decision | Item:
        """A decision now (dispatched, or a 429/503 with its reason), or the queued :class:`Item`.

        A dispatched decision has been scheduled; the caller accounts it as usual. A
        rejection is a ``Decision`` with no endpoints and ``reason`` set to the dropped
        reason header value.
        """
        state = self.state
        self._saw(info.priority, now)
        if info.fairness_id != self._last_flow:
            if self._last_flow is not None:
                self._other_flow_at = now
            self._last_flow = info.fairness_id
        cands = state.candidates(info)
        if not cands:
            if self.cfg.scale_from_zero_ttl_s <= 0 or self._any_ready():
                self.metrics.outcome(info.priority, Outcome.REJECTED_OTHER, 0.0)
                return Decision([], 503, cands.why or "no candidate endpoints")
        elif not self._waiting_at_or_above(info.priority):
            d = self._try(info, cands, now)
            if d is not None:
                if d.ok:
                    self._dispatched(info, now)
                    self.metrics.outcome(info.priority, Outcome.DISPATCHED, 0.0)
                else:
                    self.metrics.outcome(info.priority, Outcome.REJECTED_OTHER, 0.0)
                return d
        band = self.band(info.priority)
        if not self._fits(band, size):
            self.metrics.outcome(info.priority, Outcome.REJECTED_CAPACITY, 0.0)
            return Decision([], 429, f"flow control: the priority {info.priority} queue is full")
        ttl = self.cfg.ttl_s
        if not cands:
            ttl = min(ttl, self.cfg.scale_from_zero_ttl_s)
        deadline = now + slo_ttft_s if slo_ttft_s is not None and slo_ttft_s > 0 else None
        item = Item((info, waiter), info.priority, info.fairness_id, size, now, now + ttl, deadline)
        before = self.top()
        band.push(item)
        self.queued += 1
        self._count(info.target_model, 1)
        if self.on_top_rise is not None and (before is None or info.priority > before):
            self.on_top_rise()
        return item

    def _fits(self, band: Band, size: int) -> bool:
        """The band's bounds, this replica's part of them when the pool has several replicas."""
        n = self.replicas() if self.replicas is not None else 1
        if n <= 1:
            return band.fits(size)
        return band.size < max(1, band.max_requests // n) and band.bytes + size <= band.max_bytes // n

    def _count(self, model: str, delta: int) -> None:
        if model not in self.by_model and len(self.by_model) >= 256:
            model = "other"  # model names can come from clients: the table stays bounded
        n = self.by_model.get(model, 0) + delta
        if n > 0:
            self.by_model[model] = n
        else:
            self.by_model.pop(model, None)

    def cancel(self, item: Item, now: float) -> bool:
        """The client went away: the request leaves the queue at once. False if it had left."""
        if not item.live or item.band is None:
            return False
        item.band.drop(item)
        self.queued -= 1
        self._count(item.payload[0].target_model, -1)
        self.metrics.outcome(item.priority, Outcome.EVICTED_CANCELLED, max(0.0, now - item.enqueued))
        return True

    # -- dispatch -----------------------------------------------------------------------------
    def _try(self, info: RequestInfo, cands, now: float) -> Decision | None:
        """Schedule ``info`` among its candidates with room; None when none has room."""
        pool = cands.fresh or cands.stale
        room = self.gate.available(pool, self.state, self._mixed(now))
        if not room:
            return None
        if len(room) < len(pool):
            allowed = frozenset(s.address for s in room)
            info = dataclasses.replace(info, candidates=allowed)
        d = self.scheduler.schedule(info, self.state)
        if not d.ok:
            return None if d.status == 429 else d
        return d

    def _dispatched(self, info: RequestInfo, now: float) -> None:
        if info.prompt_tokens:
            self.service.dispatched(info.fairness_id, info.prompt_tokens, now)

    def pump(self, now: float) -> int:
        """Expire, then dispatch in order until the first request that cannot go. Returns dispatched."""
        if not self.queued:
            return 0
        t0 = self.clock()
        state = self.state
        state.advance(now)
        self.service.now = now
        self._expire(now)
        sent = 0
        for band in self._order:
            if band.size and self._held(band.priority):
                return self._done(t0, sent)
            while band.size:
                item = band.peek()
                if item is None:
                    break
                info, waiter = item.payload
                cands = state.candidates(info)
                if not cands:
                    return self._done(t0, sent)  # waits for an endpoint (scale from zero)
                d = self._try(info, cands, now)
                if d is None:
                    return self._done(t0, sent)  # saturated: nothing below may overtake it
                band.take(item)
                self.queued -= 1
                self._count(info.target_model, -1)
                wait = max(0.0, now - item.enqueued)
                if d.ok:
                    self._dispatched(info, now)
                    self.metrics.outcome(item.priority, Outcome.DISPATCHED, wait)
                    sent += 1
                    waiter.dispatch(d, info)
                else:
                    self.metrics.outcome(item.priority, Outcome.REJECTED_OTHER, wait)
                    status = d.status if d.status in (429, 503) else 503
                    waiter.reject(status, d.reason, SATURATED if status == 429 else NO_ENDPOINTS)
        return self._done(t0, sent)

    def _done(self, t0: float, sent: int) -> int:
        self.metrics.cycle(self.clock() - t0)
        return sent

    def _expire(self, now: float) -> None:
        state = self.state
        for band in self._order:
            if not band.size:
                continue
            for item in band.expired(now):
                self.queued -= 1
                info, waiter = item.payload
                self._count(info.target_model, -1)
                wait = max(0.0, now - item.enqueued)
                self.metrics.outcome(item.priority, Outcome.EVICTED_TTL, wait)
                if not state.candidates(info):
                    waiter.reject(503, "no endpoint became ready in time", NO_ENDPOINTS)
                else:
                    waiter.reject(429, f"queued longer than the {self.cfg.ttl_s:g} s TTL", TTL_EXPIRED)

    def next_expiry(self) -> float | None:
        """When the oldest queued request expires (for the driver's timer)."""
        out = None
        for band in self._order:
            item = band.oldest()
            if item is not None and (out is None or item.expires < out):
                out = item.expires
        return out

    def completed(self, fairness_id: str, output_tokens: int, now: float) -> None:
        """A dispatched request ended: charge its output to its flow (least-attained-service)."""
        if output_tokens > 0:
            self.service.completed(fairness_id, output_tokens, now)

    # -- gauges ---------------------------------------------------------------------------
    def sizes(self) -> list[tuple[int, int, int]]:
        """(priority, requests, bytes) per band."""
        return [(b.priority, b.size, b.bytes) for b in self._order]

    def saturation(self) -> float:
        st = self.state
        eps = [s for s in (st.endpoint_state(a) for a in list(st.endpoints)) if s is not None and s.ok]
        self.last_saturation = self.gate.saturation(eps, st)
        return self.last_saturation
