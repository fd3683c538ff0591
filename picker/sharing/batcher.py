"""The request-path half of the publisher: buffer this replica's events, cut them into messages.

No I/O and no awaits, so the same code runs in the picker (driven by
:class:`~.publisher.PeerPublisher` on the event loop) and in the discrete-event
simulation (driven in virtual time). The :class:`~picker.hooks.EventSink` calls only
append to a bounded buffer (a few microseconds; when it is full the oldest event is
dropped and counted: it matters least, and every peer expires in-flight entries by TTL
anyway). The driver asks :meth:`EventBatcher.due` when the next message should go out:

* as soon as ``max_batch`` events are waiting (or at once with no linger);
* ``flush_interval`` after the first waiting event arrived, whichever comes first;
* when idle, a heartbeat (an empty batch) ``heartbeat_interval`` after the last message,
  so peers can tell a quiet replica from a dead one.

Events inside a batch leave ``replica``, ``namespace`` and ``pool`` empty (msgspec then
omits them): the batch names the replica and the subject names the namespace and pool,
so repeating them would add 60-80 bytes to each 270-370-byte event. Readers fill them
in (:func:`shared.feed.events_of`). With ``max_batch`` 1 every event goes out alone and
self-describing. Events older than ``max_event_age`` (the stream's age) are dropped.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable

from picker.scheduling.api import RequestInfo
from shared.schemas import Assignment, Completion, EventBatch, encode
from shared.schemas import now as wall_now
from shared.subjects import Subjects

from .metrics import SharingMetrics
from .settings import SharingSettings

__all__ = ["EventBatcher", "Message"]

log = logging.getLogger(__name__)

Message = EventBatch | Assignment | Completion


class EventBatcher:
    """The :class:`~picker.hooks.EventSink` of this replica's own traffic, and its batching policy."""

    def __init__(
        self,
        subjects: Subjects,
        namespace: str,
        pool: str,
        settings: SharingSettings,
        *,
        metrics: SharingMetrics | None = None,
        clock: Callable[[], float] = wall_now,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.pool = pool
        self.replica = settings.replica
        # This process's id in every batch and heartbeat: tells two replicas with one name apart.
        self.instance = secrets.token_hex(8)
        self.subject = subjects.events(namespace, pool, settings.replica)
        self.flush_interval = settings.flush_interval_s
        self.max_batch = max(1, settings.max_batch)
        self.buffer_events = max(1, settings.buffer_events)
        self.max_event_age = settings.max_event_age_s
        self.heartbeat_interval = settings.heartbeat_interval_s
        self.metrics = metrics or SharingMetrics()
        self.clock = clock
        # Called when the buffer becomes non-empty or fills a batch: the due time moved earlier.
        self.on_wake = on_wake
        self._buf: deque[Assignment | Completion] = deque()
        self._first_at = 0.0  # clock time the oldest waiting event arrived
        self.last_publish = float("-inf")  # clock time
        self.dropped = 0
        self.published_batches = 0
        self.published_bytes = 0
        self.published_events = 0
        self.metrics.buffered_events.set_function(lambda: len(self._buf))

    # -- the EventSink, called on the request path ----------------------------------------

    def on_local_assignment(self, request: RequestInfo, address: str, now: float) -> None:
        self._enqueue(
            Assignment(
                request_id=request.request_id,
                replica="",  # implied by the batch and the subject
                address=address,
                model=request.model,
                target_model=request.target_model,
                criticality=request.criticality,
                prompt_tokens=request.prompt_tokens,
                expected_output_tokens=request.expected_output_tokens,
                prefix_hashes=request.prefix_hashes,
                ts=now,
            )
        )

    def on_local_completion(
        self,
        request: RequestInfo,
        address: str,
        status: int,
        prompt_tokens: int,
        output_tokens: int,
        latency_s: float,
        ttft_s: float,
        now: float,
    ) -> None:
        self._enqueue(
            Completion(
                request_id=request.request_id,
                replica="",
                address=address,
                model=request.model,
                target_model=request.target_model,
                status=int(status),
                prompt_tokens=int(prompt_tokens),
                output_tokens=int(output_tokens),
                latency_s=float(latency_s),
                ttft_s=float(ttft_s),
                ts=now,
            )
        )

    def _enqueue(self, ev: Assignment | Completion) -> None:
        buf = self._buf
        if len(buf) >= self.buffer_events:
            buf.popleft()
            self._drop("buffer_full")
        buf.append(ev)
        if len(buf) == 1:
            self._first_at = self.clock()
            self._wake()
        elif len(buf) == self.max_batch:
            self._wake()

    def _wake(self) -> None:
        if self.on_wake is not None:
            self.on_wake()

    # -- the policy, for the driver -----------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def due(self) -> float:
        """Clock time at which the next message should be published (maybe already past)."""
        if not self._buf:
            return self.last_publish + self.heartbeat_interval
        if len(self._buf) >= self.max_batch or self.flush_interval <= 0:
            return self._first_at
        return self._first_at + self.flush_interval

    def take(self, *, heartbeat: bool = True) -> list[tuple[Message, int]]:
        """Empty the buffer into messages, each with its number of events.

        With nothing buffered, a heartbeat when one is due (and ``heartbeat``).
        """
        self.drop_stale()
        buf = self._buf
        if not buf:
            # the same comparison as due(): a heartbeat is due exactly when due() says so
            if heartbeat and self.clock() >= self.last_publish + self.heartbeat_interval:
                return [(self._batch([]), 0)]
            return []
        out: list[tuple[Message, int]] = []
        while buf:
            if self.max_batch == 1:  # batching off: one bare, self-describing event per message
                ev = buf.popleft()
                ev.replica, ev.pool, ev.namespace = self.replica, self.pool, self.namespace
                out.append((ev, 1))
                continue
            n = min(len(buf), self.max_batch)
            events = [buf.popleft() for _ in range(n)]
            out.append((self._batch(events), n))
        return out

    def _batch(self, events: list[Assignment | Completion]) -> EventBatch:
        return EventBatch(replica=self.replica, events=events, ts=self.clock(), instance=self.instance)

    def encode(self, message: Message, n_events: int) -> tuple[bytes | None, Message, int]:
        """The wire bytes of a message; an event that cannot be encoded is dropped alone.

        A value out of msgspec's range (an integer past 64 bits, from a client or a pod)
        must cost its own event only: the batch is re-encoded without it, the drop is
        counted (``encode_error``) and logged. Returns ``(None, …)`` when nothing is left.
        """
        try:
            return encode(message), message, n_events
        except Exception as exc:  # OverflowError, TypeError, msgspec.EncodeError: all the message's fault
            error = exc
        if not isinstance(message, EventBatch):
            self._bad_event(message, error)
            return None, message, 0
        good = []
        for ev in message.events:
            try:
                encode(ev)
            except Exception as exc:
                self._bad_event(ev, exc)
                continue
            good.append(ev)
        if not good:
            return None, message, 0
        batch = EventBatch(replica=message.replica, events=good, ts=message.ts, instance=message.instance)
        return encode(batch), batch, len(good)

    def _bad_event(self, ev: Assignment | Completion, exc: Exception) -> None:
        self._drop("encode_error")
        log.error(
            "peer event could not be encoded; dropped",
            extra={"request_id": ev.request_id, "kind": type(ev).__name__, "error": repr(exc)},
        )

    def sent(self, message: Message, size: int, n_events: int) -> None:
        """Account a published message (``size`` bytes)."""
        self.last_publish = self.clock()
        self.published_batches += 1
        self.published_bytes += size
        self.published_events += n_events
        m = self.metrics
        m.published_batches.inc()
        m.published_bytes.inc(size)
        if not n_events:
            return
        if isinstance(message, EventBatch):
            na = sum(1 for e in message.events if isinstance(e, Assignment))
            if na:
                m.published_events.labels("assignment").inc(na)
            if n_events - na:
                m.published_events.labels("completion").inc(n_events - na)
        else:
            m.published_events.labels("assignment" if isinstance(message, Assignment) else "completion").inc()

    def lost(self, reason: str, n: int) -> None:
        """Account events that could not be published."""
        self._drop(reason, n)

    def drop_stale(self) -> None:
        """Drop events older than the stream keeps (also while offline, to bound what is kept)."""
        buf = self._buf
        limit = self.clock() - self.max_event_age
        while buf and buf[0].ts < limit:
            buf.popleft()
            self._drop("too_old")

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped += n
        self.metrics.dropped_events.labels(reason).inc(n)
