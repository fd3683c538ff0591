"""Publishing this replica's assignments and completions to its peers.

:class:`PeerPublisher` is the :class:`~.batcher.EventBatcher` (the request-path sink and
the batching policy) plus the background task that publishes its messages on the
replica's own subject, when :meth:`~.batcher.EventBatcher.due` says so. That bounds
both the added latency (one linger) and the bus load (at most one message per linger
per replica under light load, one message per ``max_batch`` events under heavy load).

Publishing is fire-and-forget on the bus; the subject is covered by the event stream,
so every batch is also stored for replays. While the bus is disconnected the buffer
keeps the newest ``buffer_events`` events (drop-oldest, counted). A message that fails
to publish is lost and counted; the task never spins on a failing connection. An event
that cannot be encoded (a number out of range) is dropped alone and counted
(``encode_error``): the rest of its batch still goes out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shared.bus import Bus, raise_if_cancelling
from shared.schemas import now as wall_now

from .batcher import EventBatcher, Message
from .metrics import SharingMetrics
from .settings import SharingSettings

__all__ = ["PeerPublisher"]

log = logging.getLogger(__name__)


class PeerPublisher(EventBatcher):
    """The :class:`~picker.hooks.EventSink` that publishes this replica's own traffic on the bus."""

    def __init__(
        self,
        bus: Bus,
        namespace: str,
        pool: str,
        settings: SharingSettings,
        *,
        metrics: SharingMetrics | None = None,
        clock: Callable[[], float] = wall_now,
        offline_poll_s: float = 0.05,
        before_resume: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._woken = asyncio.Event()
        super().__init__(
            bus.subjects, namespace, pool, settings, metrics=metrics, clock=clock, on_wake=self._woken.set
        )
        self.bus = bus
        self.offline_poll = offline_poll_s
        # Called once when the bus is back after an outage, before the buffered events go out:
        # PeerSharing recreates the event stream there (a restarted server lost its memory
        # stream), so what we buffered is stored for peers that replay after reconnecting.
        self.before_resume = before_resume
        self._offline = False

    async def run(self) -> None:
        """Publish until cancelled; run it under the service's :class:`~shared.service.Supervisor`."""
        while True:
            await self._wait_until_due()
            await self._flush_once()
            raise_if_cancelling()

    async def flush(self) -> None:
        """Publish everything buffered now (tests, and shutdown so peers see our last completions)."""
        if self.bus.connected:
            await self._publish(self.take(heartbeat=False))

    async def _wait_until_due(self) -> None:
        while True:
            delay = self.due() - self.clock()
            if delay <= 0:
                return
            self._woken.clear()
            try:
                await asyncio.wait_for(self._woken.wait(), delay)
            except TimeoutError:
                return

    async def _flush_once(self) -> None:
        self.drop_stale()
        if not self.bus.connected:
            self._offline = True
            await asyncio.sleep(self.offline_poll)  # keep buffering (drop-oldest) until the bus is back
            return
        if self._offline:
            self._offline = False
            if self.before_resume is not None:
                try:
                    await asyncio.wait_for(self.before_resume(), 2.0)
                except Exception as exc:
                    log.warning("preparing to resume publishing failed", extra={"error": repr(exc)})
        await self._publish(self.take())

    async def _publish(self, messages: list[tuple[Message, int]]) -> None:
        for message, n_events in messages:
            data, message, n_events = self.encode(message, n_events)
            if data is None:  # every event of it was unencodable (dropped and counted)
                continue
            try:
                await self.bus.publish(self.subject, data)
            except Exception as exc:  # disconnected mid-flush, buffer limit: the events are lost
                self.lost("publish_error", n_events)
                log.warning("publishing peer events failed", extra={"error": repr(exc), "events": n_events})
                await asyncio.sleep(self.offline_poll)  # do not spin on a failing connection
                continue
            self.sent(message, len(data), n_events)
