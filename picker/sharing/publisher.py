"""Publishing this replica's assignments and completions to its peers.

Events inside a batch leave ``replica``, ``namespace`` and ``pool`` empty (msgspec then
omits them): the batch names the replica and the subject names the namespace and pool,
so repeating them would add 60-80 bytes to each 270-370-byte event. Readers fill them
in (:class:`~.applier.EventApplier` from the batch, the autoscaler from the subject).

The request path only appends to a bounded in-memory buffer (a few microseconds, no
await, never raises). A background task publishes the buffer as :class:`EventBatch`
messages on this replica's own subject: as soon as ``max_batch`` events are waiting,
or ``flush_interval`` after the first one arrived, whichever comes first. That bounds
both the added latency (one linger) and the bus load (at most one message per linger
per replica under light load, one message per ``max_batch`` events under heavy load).

Publishing uses core NATS (fire-and-forget); because the subject is covered by the
``<PREFIX>_EVENTS`` JetStream stream, the server also stores every batch for replays.
While NATS is disconnected the buffer keeps the newest ``buffer_events`` events and
drops the oldest (counted): they matter less, and every peer expires in-flight entries
by TTL anyway. Events older than ``max_event_age`` are dropped at the next flush.

When idle, an empty batch is published every ``heartbeat_interval`` so peers can tell
a quiet replica from a dead one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from picker.scheduling.api import RequestInfo
from shared.schemas import Assignment, Completion, EventBatch, encode
from shared.schemas import now as wall_now
from shared.subjects import Subjects

from .metrics import SharingMetrics
from .replay import raise_if_cancelling
from .settings import SharingSettings

__all__ = ["PeerPublisher"]

log = logging.getLogger(__name__)

_MODEL_MEMORY = 65536  # request_id -> model names kept for completions (bounded)


class PeerPublisher:
    """The :class:`~.sink.EventSink` that publishes this replica's own traffic over NATS."""

    def __init__(
        self,
        nc: Any,
        subjects: Subjects,
        namespace: str,
        pool: str,
        settings: SharingSettings,
        *,
        metrics: SharingMetrics | None = None,
        clock: Callable[[], float] = wall_now,
        offline_poll_s: float = 0.05,
        before_resume: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.nc = nc
        self.namespace = namespace
        self.pool = pool
        self.replica = settings.replica
        self.subject = subjects.events(namespace, pool, settings.replica)
        self.flush_interval = settings.flush_interval_s
        self.max_batch = max(1, settings.max_batch)
        self.buffer_events = max(1, settings.buffer_events)
        self.max_event_age = settings.max_event_age_s
        self.heartbeat_interval = settings.heartbeat_interval_s
        self.offline_poll = offline_poll_s
        # Called once when NATS is back after an outage, before the buffered events go out:
        # PeerSharing recreates the event stream there (a restarted server lost its memory
        # stream), so what we buffered is stored for peers that replay after reconnecting.
        self.before_resume = before_resume
        self._offline = False
        self.metrics = metrics or SharingMetrics()
        self.clock = clock
        self._buf: deque[Assignment | Completion] = deque()
        self._wake = asyncio.Event()  # the buffer became non-empty
        self._full = asyncio.Event()  # the buffer holds a full batch
        self._models: dict[str, tuple[str, str]] = {}
        self._last_publish = float("-inf")  # loop time
        self.dropped = 0
        self.published_batches = 0
        self.published_bytes = 0
        self.published_events = 0
        self.metrics.buffered_events.set_function(lambda: len(self._buf))

    # -- the EventSink, called on the request path ----------------------------------------

    def on_local_assignment(self, request: RequestInfo, address: str, now: float) -> None:
        try:
            self._models[request.request_id] = (request.model, request.target_model)
            if len(self._models) > _MODEL_MEMORY:
                del self._models[next(iter(self._models))]
            self._enqueue(
                Assignment(
                    request_id=request.request_id,
                    replica="",  # implied by the batch and the subject (see _send)
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
        except Exception:  # never break a request because of the side channel
            log.exception("could not queue an assignment event")

    def on_local_completion(
        self,
        request_id: str,
        address: str,
        status: int,
        prompt_tokens: int,
        output_tokens: int,
        latency_s: float,
        ttft_s: float,
        now: float,
    ) -> None:
        try:
            model, target = self._models.pop(request_id, ("", ""))
            self._enqueue(
                Completion(
                    request_id=request_id,
                    replica="",
                    address=address,
                    model=model,
                    target_model=target,
                    status=int(status),
                    prompt_tokens=int(prompt_tokens),
                    output_tokens=int(output_tokens),
                    latency_s=float(latency_s),
                    ttft_s=float(ttft_s),
                    ts=now,
                )
            )
        except Exception:
            log.exception("could not queue a completion event")

    def _enqueue(self, ev: Assignment | Completion) -> None:
        buf = self._buf
        if len(buf) >= self.buffer_events:
            buf.popleft()
            self._drop("buffer_full")
        buf.append(ev)
        if len(buf) == 1:
            self._wake.set()
        if len(buf) >= self.max_batch:
            self._full.set()

    # -- the background task ----------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def run(self) -> None:
        """Publish until cancelled; run it under the service's :class:`~shared.service.Supervisor`."""
        while True:
            await self._wait_for_work()
            await self._flush_once()
            raise_if_cancelling()

    async def flush(self) -> None:
        """Publish everything buffered now (tests, and shutdown so peers see our last completions)."""
        if self._connected():
            await self._publish_all()

    async def _wait_for_work(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._buf:
            self._wake.clear()
            due = self._last_publish + self.heartbeat_interval - loop.time()
            if due > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), due)
                except TimeoutError:
                    return  # idle: time for a heartbeat
        if 0 < len(self._buf) < self.max_batch and self.flush_interval > 0:
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), self.flush_interval)
            except TimeoutError:
                pass

    async def _flush_once(self) -> None:
        self._drop_stale()
        if not self._connected():
            self._offline = True
            await asyncio.sleep(self.offline_poll)  # keep buffering (drop-oldest) until NATS is back
            return
        if self._offline:
            self._offline = False
            if self.before_resume is not None:
                try:
                    await asyncio.wait_for(self.before_resume(), 2.0)
                except Exception as exc:
                    log.warning("preparing to resume publishing failed", extra={"error": repr(exc)})
        if self._buf:
            await self._publish_all()
        elif asyncio.get_running_loop().time() - self._last_publish >= self.heartbeat_interval:
            await self._send(EventBatch(replica=self.replica, events=[], ts=self.clock()), 0)

    async def _publish_all(self) -> None:
        buf = self._buf
        while buf:
            if self.max_batch == 1:  # batching off: one bare, self-describing event per message
                ev = buf.popleft()
                ev.replica, ev.pool, ev.namespace = self.replica, self.pool, self.namespace
                await self._send(ev, 1)
                continue
            n = min(len(buf), self.max_batch)
            events = [buf.popleft() for _ in range(n)]
            await self._send(EventBatch(replica=self.replica, events=events, ts=self.clock()), n)

    async def _send(self, message: EventBatch | Assignment | Completion, n_events: int) -> None:
        data = encode(message)
        try:
            await self.nc.publish(self.subject, data)
        except Exception as exc:  # disconnected mid-flush, buffer limit: the events are lost
            self._drop("publish_error", n_events)
            log.warning("publishing peer events failed", extra={"error": repr(exc), "events": n_events})
            await asyncio.sleep(self.offline_poll)  # do not spin on a failing connection
            return
        self._last_publish = asyncio.get_running_loop().time()
        self.published_batches += 1
        self.published_bytes += len(data)
        self.published_events += n_events
        m = self.metrics
        m.published_batches.inc()
        m.published_bytes.inc(len(data))
        if n_events:
            if isinstance(message, EventBatch):
                na = sum(1 for e in message.events if isinstance(e, Assignment))
                if na:
                    m.published_events.labels("assignment").inc(na)
                if n_events - na:
                    m.published_events.labels("completion").inc(n_events - na)
            else:
                m.published_events.labels(
                    "assignment" if isinstance(message, Assignment) else "completion"
                ).inc()

    def _drop_stale(self) -> None:
        buf = self._buf
        limit = self.clock() - self.max_event_age
        while buf and buf[0].ts < limit:
            buf.popleft()
            self._drop("too_old")

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped += n
        self.metrics.dropped_events.labels(reason).inc(n)

    def _connected(self) -> bool:
        return bool(getattr(self.nc, "is_connected", False))
