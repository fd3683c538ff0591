"""One object the picker service wires in: publisher + listener + readiness.

::

    sharing = PeerSharing(nc, subjects, namespace, pool, settings, scheduler, registry=registry)
    sharing.start(supervisor)            # background tasks, restarted if they crash
    health.add_check("peers", sharing.is_ready)
    ...
    sink = sharing.sink                  # EventSink: on_local_assignment / on_local_completion
    ...
    await sharing.close()                # flushes our last events, unsubscribes
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from shared.natsconn import StreamSettings, ensure_streams
from shared.schemas import now as wall_now
from shared.service import Supervisor
from shared.subjects import Subjects

from .listener import PeerListener
from .metrics import SharingMetrics
from .publisher import PeerPublisher
from .settings import SharingSettings
from .sink import AccountingHooks, EventSink

__all__ = ["PeerSharing"]


class PeerSharing:
    def __init__(
        self,
        nc: Any,
        subjects: Subjects,
        namespace: str,
        pool: str,
        settings: SharingSettings,
        hooks: AccountingHooks,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = wall_now,
        manage_streams: bool = True,
        stream_settings: StreamSettings | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = SharingMetrics(registry)
        self._subjects = subjects
        self._nc = nc
        self._stream_settings = stream_settings
        self.publisher = PeerPublisher(
            nc,
            subjects,
            namespace,
            pool,
            settings,
            metrics=self.metrics,
            clock=clock,
            before_resume=self._ensure_streams if manage_streams else None,
        )
        self.listener = PeerListener(
            nc,
            subjects,
            namespace,
            pool,
            settings,
            hooks,
            metrics=self.metrics,
            clock=clock,
            manage_streams=manage_streams,
            stream_settings=stream_settings,
        )

    async def _ensure_streams(self) -> None:
        await ensure_streams(self._nc.jetstream(), self._subjects, self._stream_settings)

    @property
    def sink(self) -> EventSink:
        return self.publisher

    @property
    def ready(self):  # asyncio.Event
        return self.listener.ready

    def is_ready(self) -> bool:
        return self.listener.is_ready

    def start(self, supervisor: Supervisor) -> None:
        supervisor.spawn("sharing-publisher", self.publisher.run)
        supervisor.spawn("sharing-listener", self.listener.run)

    async def close(self) -> None:
        try:
            await self.publisher.flush()
        finally:
            await self.listener.close()
