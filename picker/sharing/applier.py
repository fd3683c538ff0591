"""Applying peers' events to the local pool state exactly once.

The rules are :class:`shared.feed.EventLedger`'s, the same the autoscaler applies: an
event delivered twice (live and again from a replay), an assignment that arrives after
its completion, a request id reused for a new request. This module adds what only the
picker needs: turning a wire event into the scheduling :class:`RequestInfo`, the
metrics, and, per peer replica, its open requests, so a peer that stops sending
heartbeats can have them released at once (:meth:`EventApplier.forget_replica`) rather
than at the in-flight TTL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from picker.hooks import AccountingHooks
from picker.scheduling.api import CRITICALITIES, Criticality, RequestInfo
from shared.feed import EventLedger, event_time, events_of
from shared.schemas import Assignment, Completion, EventBatch
from shared.schemas import now as wall_now

from .metrics import SharingMetrics

__all__ = ["EventApplier", "to_request_info"]

log = logging.getLogger(__name__)


def to_request_info(a: Assignment) -> RequestInfo:
    """The scheduler's view of a peer's request, rebuilt from the wire event."""
    crit: Criticality = a.criticality if a.criticality in CRITICALITIES else "Standard"  # type: ignore[assignment]
    return RequestInfo(
        request_id=a.request_id,
        model=a.model,
        target_model=a.target_model or a.model,
        criticality=crit,
        prompt_tokens=max(0, a.prompt_tokens),
        prefix_hashes=list(a.prefix_hashes),
        expected_output_tokens=max(0, a.expected_output_tokens),
    )


class EventApplier:
    """Idempotent application of assignments/completions to :class:`AccountingHooks`."""

    def __init__(
        self,
        hooks: AccountingHooks,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = wall_now,
        metrics: SharingMetrics | None = None,
    ) -> None:
        self.hooks = hooks
        self.clock = clock
        self.metrics = metrics or SharingMetrics()
        self.ledger = EventLedger(ttl)
        self.last_seen: dict[str, float] = {}  # replica -> wall time it was last heard from
        self.applied = 0
        self.duplicates = 0
        self.live_assignments = 0  # peers' assignments applied from the live subscription
        self.live_lag = 0.005  # running mean of their delay from the peer's decision to here, s

    def __len__(self) -> int:
        return len(self.ledger)

    def open_requests(self, replica: str) -> int:
        return self.ledger.open_requests(replica)

    # -- entry points -----------------------------------------------------------------------

    def apply_batch(self, batch: EventBatch, *, source: str = "live") -> int:
        """Apply every event of ``batch``; returns how many were applied (not duplicates)."""
        now = self.clock()
        self._heard(batch.replica, min(batch.ts, now) if batch.ts > 0 else now)
        return sum(self.apply_event(ev, source=source, now=now) for ev in events_of(batch))

    def apply_event(
        self, ev: Assignment | Completion, *, source: str = "live", now: float | None = None
    ) -> int:
        """Apply one event; returns 1 if applied, 0 if it was a duplicate or unusable."""
        now = self.clock() if now is None else now
        # The state wants the time the event happened (an assignment older than a
        # snapshot is already in the pod's counts).
        at = event_time(ev, now)
        if ev.replica:
            self._heard(ev.replica, at)
        self.ledger.expire(now)
        try:
            if isinstance(ev, Assignment):
                ok = self.ledger.assign(ev.replica, ev.request_id, at)
                if ok:
                    self.hooks.on_assigned(to_request_info(ev), ev.address, at, replica=ev.replica)
                kind = "assignment"
            else:
                # An id whose assignment we never saw is still released: the state ignores unknown ids.
                ok = self.ledger.complete(ev.replica, ev.request_id, at)
                if ok:
                    outcome = getattr(self.hooks, "on_outcome", None)  # the pool state's learners
                    if outcome is not None:
                        outcome(
                            ev.request_id,
                            ev.replica,
                            ev.status,
                            ev.ttft_s,
                            ev.latency_s,
                            ev.output_tokens,
                            at,
                        )
                    self.hooks.on_completed(ev.request_id, at, replica=ev.replica)
                kind = "completion"
        except Exception:  # a state bug must not kill the subscription
            log.exception("applying a peer event failed", extra={"request_id": ev.request_id})
            return 0
        if not ok:
            self.duplicates += 1
            self.metrics.duplicate_events.inc()
            return 0
        self.applied += 1
        self.metrics.applied_events.labels(kind, source).inc()
        if source == "live":
            lag = max(0.0, now - at)
            self.metrics.apply_lag.observe(lag)
            if kind == "assignment":
                self.live_assignments += 1
                self.live_lag += (lag - self.live_lag) * 0.05
        return 1

    def forget_replica(self, replica: str, now: float | None = None) -> int:
        """Release every open request of a peer that went silent; returns how many."""
        now = self.clock() if now is None else now
        released = self.ledger.forget_replica(replica, now)
        for rid in released:
            self.hooks.on_completed(rid, now, replica=replica)
        self.last_seen.pop(replica, None)
        return len(released)

    def expire(self, now: float) -> None:
        """Forget ids whose last event is older than the TTL."""
        self.ledger.expire(now)

    def _heard(self, replica: str, at: float) -> None:
        if not replica:
            return
        prev = self.last_seen.get(replica)
        if prev is None or at > prev:
            self.last_seen[replica] = at
