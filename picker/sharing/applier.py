"""Applying peers' events to the local scheduler exactly once.

The same event can reach a replica twice: live over core NATS and again from the
JetStream replay that runs at start and after a reconnect, or redelivered after a
reconnect. Completions can also overtake their assignment (a live completion arrives
while the replay has not yet reached the assignment). The scheduler's own in-flight
tracker would treat a second assignment as a re-assignment and re-open a request that
already finished, leaking load until its TTL. So this module remembers, per
``request_id``, the newest assignment time and whether it completed, and applies:

* an assignment only if it is newer than what was seen for that id and the id has not
  completed since (an id reused for a new request, with a later ``ts``, is applied);
* a completion only once per id; it is remembered even when its assignment was never
  seen, so that the late assignment is then ignored instead of leaking.

The memory is bounded by time: ids older than ``ttl`` (longer than the event stream's
max age, so any replayed duplicate is still recognised) are forgotten in O(1) amortized.

It also tracks, per peer replica, its open (assigned, not completed) requests, so a
peer that stops sending heartbeats can have them released at once (:meth:`forget_replica`)
rather than at the scheduler's TTL.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from picker.scheduling.api import CRITICALITIES, Criticality, RequestInfo
from shared.schemas import Assignment, Completion, EventBatch
from shared.schemas import now as wall_now

from .metrics import SharingMetrics
from .sink import AccountingHooks

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


class _Seen:
    __slots__ = ("address", "assigned_at", "done_at", "replica")

    def __init__(self) -> None:
        self.replica = ""
        self.address = ""
        self.assigned_at = float("-inf")
        self.done_at: float | None = None


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
        self.ttl = ttl
        self.clock = clock
        self.metrics = metrics or SharingMetrics()
        self._seen: dict[str, _Seen] = {}
        self._expiry: deque[tuple[float, str]] = deque()  # (event time, request_id), roughly ordered
        self._open: dict[str, dict[str, None]] = {}  # replica -> its open request ids (insertion-ordered)
        self.last_seen: dict[str, float] = {}  # replica -> wall time it was last heard from
        self.applied = 0
        self.duplicates = 0
        self.live_assignments = 0  # peers' assignments applied from the live subscription
        self.live_lag = 0.005  # running mean of their delay from the peer's decision to here, s

    def __len__(self) -> int:
        return len(self._seen)

    def open_requests(self, replica: str) -> int:
        return len(self._open.get(replica, ()))

    # -- entry points -----------------------------------------------------------------------

    def apply_batch(self, batch: EventBatch, *, source: str = "live") -> int:
        """Apply every event of ``batch``; returns how many were applied (not duplicates)."""
        now = self.clock()
        self._heard(batch.replica, min(batch.ts, now) if batch.ts > 0 else now)
        n = 0
        for ev in batch.events:
            if not ev.replica:  # compact batches name the replica once
                ev.replica = batch.replica
            n += self.apply_event(ev, source=source, now=now)
        return n

    def apply_event(
        self, ev: Assignment | Completion, *, source: str = "live", now: float | None = None
    ) -> int:
        """Apply one event; returns 1 if applied, 0 if it was a duplicate or unusable."""
        now = self.clock() if now is None else now
        # The scheduler wants the time the event happened (an assignment older than a
        # snapshot is already in the pod's counts), clamped so a peer whose clock runs
        # ahead cannot place it in our future.
        at = min(ev.ts, now) if ev.ts > 0 else now
        if ev.replica:
            self._heard(ev.replica, at)
        self.expire(now)
        try:
            if isinstance(ev, Assignment):
                ok = self._assign(ev, at)
                kind = "assignment"
            else:
                ok = self._complete(ev.request_id, at)
                kind = "completion"
        except Exception:  # a scheduler bug must not kill the subscription
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
        open_ids = self._open.pop(replica, {})
        for rid in open_ids:
            seen = self._seen.get(rid)
            if seen is not None:
                seen.done_at = now
            self.hooks.on_completed(rid, now)
        self.last_seen.pop(replica, None)
        return len(open_ids)

    def expire(self, now: float) -> None:
        """Forget ids whose last event is older than the TTL."""
        q = self._expiry
        limit = now - self.ttl
        while q and q[0][0] <= limit:
            at, rid = q.popleft()
            seen = self._seen.get(rid)
            if seen is None:
                continue
            last = seen.done_at if seen.done_at is not None else seen.assigned_at
            if last > at:  # touched again later; a newer expiry entry exists
                continue
            del self._seen[rid]
            if seen.done_at is None:
                self._open.get(seen.replica, {}).pop(rid, None)

    # -- the rules ------------------------------------------------------------------------

    def _assign(self, a: Assignment, at: float) -> bool:
        rid = a.request_id
        seen = self._seen.get(rid)
        if seen is None:
            seen = self._seen[rid] = _Seen()
        elif at <= seen.assigned_at:
            return False  # the same assignment again (or an older one)
        elif seen.done_at is not None and at <= seen.done_at:
            return False  # it already completed: re-opening it would leak
        elif seen.done_at is None and seen.replica:
            self._open.get(seen.replica, {}).pop(rid, None)  # re-assigned: the old entry is over
        seen.assigned_at = at
        seen.done_at = None
        seen.replica = a.replica
        seen.address = a.address
        self._open.setdefault(a.replica, {})[rid] = None
        self._expiry.append((at, rid))
        self.hooks.on_assigned(to_request_info(a), a.address, at, replica=a.replica)
        return True

    def _complete(self, rid: str, at: float) -> bool:
        seen = self._seen.get(rid)
        if seen is None:
            seen = self._seen[rid] = _Seen()  # completion first: remember it to reject the assignment
        elif seen.done_at is not None:
            return False
        else:
            self._open.get(seen.replica, {}).pop(rid, None)
        # An id whose assignment we never saw is still released: the scheduler ignores unknown ids.
        seen.done_at = max(at, seen.assigned_at)
        self._expiry.append((seen.done_at, rid))
        self.hooks.on_completed(rid, at)
        return True

    def _heard(self, replica: str, at: float) -> None:
        if not replica:
            return
        prev = self.last_seen.get(replica)
        if prev is None or at > prev:
            self.last_seen[replica] = at
