"""The pool view: the latest snapshot of every endpoint of one pool, fed from the bus.

:class:`PoolView` is the pure part: it decides which snapshots and tombstones are applied,
with the ordering rules of :class:`shared.feed.SnapshotOrder` (the same rules the
autoscaler applies), and applies them to the pool state
(:class:`picker.scheduling.pool.PoolState`: ``on_snapshot`` / ``on_endpoint_removed``).
The view keeps the rules (ordering, tombstone memory, the pool filter, its counters,
"bootstrapped"); the state keeps the endpoint table, which ``endpoints`` and ``list()``
read: one owner per datum (the state's docstring says why they are two objects).
:class:`NatsFeed` is the transport: it connects a
:class:`~shared.natsbus.NatsBus` and runs a :class:`shared.feed.LastValueFeed` over the
pool's endpoint subjects, so a starting replica first receives the last value of every
endpoint, then live updates, and re-subscribes after every reconnect.

The view is never cleared on a NATS disconnect: routing goes on from the last picture
(stale metrics rank last), and the replayed last values after a re-subscription are
harmless (they fail the ordering test when already applied). Tombstone marks are kept
``TOMBSTONE_MEMORY_S``, so a reordered snapshot cannot resurrect a removed endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from shared.feed import LastValueFeed, SnapshotOrder
from shared.natsbus import NatsBus
from shared.natsconn import NatsOptions
from shared.schemas import EndpointSnapshot, Tombstone, endpoint_decoder

from .scheduling.api import EndpointView
from .scheduling.pool import PoolState

__all__ = ["NatsFeed", "PoolView"]

log = logging.getLogger(__name__)

TOMBSTONE_MEMORY_S = 600.0


class PoolView:
    """Endpoints of one pool, ordered-update semantics, readiness after the bootstrap."""

    def __init__(
        self,
        namespace: str,
        pool: str,
        state: PoolState,
        *,
        clock: Callable[[], float] = time.time,
        staleness: float = 2.0,
    ) -> None:
        self.namespace = namespace
        self.pool = pool
        self.state = state
        self.clock = clock
        self.staleness = staleness
        self.order = SnapshotOrder()
        self.bootstrapped = False
        self.decoder = endpoint_decoder(self._on_decode_error)
        # Counters read by the metrics collector.
        self.accepted = 0
        self.dropped: dict[str, int] = {"stale": 0, "foreign": 0, "invalid": 0}
        self.tombstones = 0
        self.last_update = 0.0

    # -- applying updates ---------------------------------------------------------------
    def _on_decode_error(self, data: bytes, exc: Exception) -> None:
        log.warning("undecodable endpoint message dropped", extra={"bytes": len(data), "error": str(exc)})

    def on_message(self, subject: str, data: bytes) -> None:
        """The bus handler (the subject adds nothing: every message names its endpoint)."""
        self.handle(data)

    def handle(self, data: bytes, now: float | None = None) -> bool:
        """Decode and apply one NATS payload; bad payloads are counted and dropped."""
        msg = self.decoder.decode(data)
        if msg is None:
            return False
        return self.apply(msg, now)

    def apply(self, msg: EndpointSnapshot | Tombstone, now: float | None = None) -> bool:
        """Apply a snapshot or tombstone; return whether it was accepted."""
        now = self.clock() if now is None else now
        if msg.namespace != self.namespace or msg.pool != self.pool:
            self.dropped["foreign"] += 1
            return False
        if not self.order.plausible(msg, now):  # a time that cannot be ordered (NaN, far future)
            self.dropped["invalid"] += 1
            return False
        if not self.order.admit(msg, now):
            self.dropped["stale"] += 1
            return False
        address = msg.address
        self.last_update = now
        self.accepted += 1
        if isinstance(msg, Tombstone):
            self.tombstones += 1
            if self.order.tombstoned >= 64:
                self.order.forget_tombstones(now - TOMBSTONE_MEMORY_S)
            if address in self.state.endpoints:
                self._safe(self.state.on_endpoint_removed, address, now)
            return True
        self._safe(self.state.on_snapshot, msg, now)
        return True

    @staticmethod
    def _safe(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a state bug must not stop the feed
            log.exception("pool state hook failed", extra={"hook": getattr(fn, "__name__", "?")})

    # -- reading ------------------------------------------------------------------------
    @property
    def endpoints(self) -> dict[str, EndpointView]:
        """The pool state's endpoint table (address -> latest snapshot as received)."""
        return self.state.endpoints

    def list(self) -> list[EndpointView]:
        """The endpoints, as a list rebuilt only after a change (the hot path reads it per request)."""
        return self.state.views()

    def stats(self, now: float | None = None) -> dict[str, float]:
        """Pool-level averages for the upstream gauges, computed at scrape time."""
        now = self.clock() if now is None else now
        eps = self.list()
        ready = [e for e in eps if e.snapshot.ready and e.snapshot.healthy]
        n = len(ready)
        ages = [e.metrics_age(now) for e in eps]
        return {
            "endpoints": len(eps),
            "ready": n,
            "avg_kv": sum(e.snapshot.kv_usage for e in ready) / n if n else 0.0,
            "avg_queue": sum(e.snapshot.waiting for e in ready) / n if n else 0.0,
            "max_age": max(ages) if ages else 0.0,
            "stale": sum(1 for a in ages if a > self.staleness),
        }


class NatsFeed:
    """Keeps a :class:`PoolView` in sync with NATS: connects, then runs a :class:`LastValueFeed`."""

    def __init__(self, view: PoolView, opts: NatsOptions, stop: asyncio.Event | None = None) -> None:
        self.view = view
        self.opts = opts
        self.subjects = opts.subjects
        self.stop = stop or asyncio.Event()
        self.bus: NatsBus | None = None
        self.feed: LastValueFeed | None = None
        self.connected_event = asyncio.Event()  # set once the first connection is up

    @property
    def subject(self) -> str:
        return self.subjects.endpoints_of_pool(self.view.namespace, self.view.pool)

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.connected

    @property
    def subscriptions(self) -> int:
        return self.feed.subscriptions if self.feed is not None else 0

    async def run(self) -> None:
        """Connect, subscribe, and re-subscribe on every reconnect; runs until cancelled."""
        if self.bus is None:
            self.bus = await NatsBus.connect(self.opts, stop=self.stop)
            self.feed = LastValueFeed(
                self.bus, self.subject, self.view.on_message, on_bootstrapped=self._bootstrapped
            )
        self.connected_event.set()
        assert self.feed is not None
        try:
            await self.feed.run()
        except asyncio.CancelledError:  # shutdown (a crash restarts on the same connection)
            await self.bus.close()
            raise

    def _bootstrapped(self) -> None:
        if not self.view.bootstrapped:
            self.view.bootstrapped = True
            log.info("pool view bootstrapped", extra={"endpoints": len(self.view.endpoints)})
