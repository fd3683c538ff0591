"""One object the picker service wires in: publisher + listener + readiness.

::

    sharing = PeerSharing(bus, namespace, pool, settings, state, registry=registry)
    sharing.start(supervisor)            # background tasks, restarted if they crash
    health.add_check("peers", sharing.is_ready)
    ...
    sink = sharing.sink                  # EventSink: on_local_assignment / on_local_completion
    ...
    await sharing.close()                # flushes our last events, unsubscribes
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from picker.hooks import AccountingHooks, EventSink
from shared.bus import Bus
from shared.schemas import now as wall_now
from shared.service import Supervisor

from .listener import PeerListener
from .metrics import SharingMetrics
from .publisher import PeerPublisher
from .settings import SharingSettings

__all__ = ["PeerSharing"]


class PeerSharing:
    def __init__(
        self,
        bus: Bus,
        namespace: str,
        pool: str,
        settings: SharingSettings,
        hooks: AccountingHooks,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = wall_now,
        manage_streams: bool = True,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.metrics = SharingMetrics(registry)
        self.publisher = PeerPublisher(
            bus,
            namespace,
            pool,
            settings,
            metrics=self.metrics,
            clock=clock,
            before_resume=bus.ensure_streams if manage_streams else None,
        )
        self.listener = PeerListener(
            bus,
            namespace,
            pool,
            settings,
            hooks,
            metrics=self.metrics,
            clock=clock,
            manage_streams=manage_streams,
            instance=self.publisher.instance,
        )

    @property
    def sink(self) -> EventSink:
        return self.publisher

    @property
    def ready(self) -> asyncio.Event:
        return self.listener.ready

    def is_ready(self) -> bool:
        return self.listener.is_ready

    def start(self, supervisor: Supervisor) -> None:
        supervisor.spawn("sharing-publisher", self.publisher.run)
        supervisor.spawn("sharing-listener", self.listener.run)
        supervisor.spawn("sharing-liveness", self.listener.watch_peers)

    async def close(self) -> None:
        try:
            await self.publisher.flush()
        finally:
            await self.listener.close()
