"""The pool view: the latest snapshot of every endpoint of one pool, fed from NATS.

:class:`PoolView` is the pure part: it applies snapshots and tombstones with the
ordering rules below, keeps the list the scheduler reads, and calls the scheduler's
``on_snapshot``/``on_endpoint_removed``. :class:`NatsFeed` is the transport: a
JetStream ordered consumer over the pool's endpoint subjects with deliver policy
LAST_PER_SUBJECT, so a starting replica first receives the last value of every
endpoint, then live updates.

Ordering, per endpoint address (a collector restart starts a new ``epoch`` at seq 1):

* same ``epoch`` and ``seq`` <= the last accepted one: a reordered or replayed update,
  dropped;
* a different ``epoch``: accepted only when its ``ts`` is newer than the last accepted
  one (a stale message of a dead collector incarnation must not win).

Tombstones follow the same rule and leave a marker behind, so a reordered snapshot that
predates the tombstone cannot resurrect the endpoint. The view is never cleared on a
NATS disconnect: routing goes on from the last picture (stale metrics rank last), and
the feed re-subscribes after a reconnect, which replays the last values (harmlessly:
they fail the ordering test when already applied).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.js.api import DeliverPolicy

from shared.natsconn import NatsOptions, connect, ensure_streams
from shared.schemas import EndpointSnapshot, Tombstone, endpoint_decoder

from .scheduling.api import EndpointView, Scheduler

__all__ = ["NatsFeed", "PoolView"]

log = logging.getLogger(__name__)

TOMBSTONE_MEMORY_S = 600.0


class PoolView:
    """Endpoints of one pool, ordered-update semantics, readiness after the bootstrap."""

    def __init__(
        self,
        namespace: str,
        pool: str,
        scheduler: Scheduler,
        *,
        clock: Callable[[], float] = time.time,
        staleness: float = 2.0,
    ) -> None:
        self.namespace = namespace
        self.pool = pool
        self.scheduler = scheduler
        self.clock = clock
        self.staleness = staleness
        self.endpoints: dict[str, EndpointView] = {}
        self._last: dict[str, tuple[str, int, float]] = {}  # address -> (epoch, seq, ts) accepted
        self._tombstoned: dict[str, float] = {}  # address -> when, to forget old markers
        self._list: list[EndpointView] | None = None
        self.bootstrapped = False
        self.decoder = endpoint_decoder(self._on_decode_error)
        # Counters read by the metrics collector.
        self.accepted = 0
        self.dropped: dict[str, int] = {"stale": 0, "foreign": 0}
        self.tombstones = 0
        self.last_update = 0.0

    # -- applying updates ---------------------------------------------------------------
    def _on_decode_error(self, data: bytes, exc: Exception) -> None:
        log.warning("undecodable endpoint message dropped", extra={"bytes": len(data), "error": str(exc)})

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
        address = msg.address
        last = self._last.get(address)
        if last is not None:
            epoch, seq, ts = last
            if msg.epoch == epoch:
                if msg.seq <= seq:
                    self.dropped["stale"] += 1
                    return False
            elif msg.ts <= ts:
                self.dropped["stale"] += 1
                return False
        self._last[address] = (msg.epoch, msg.seq, msg.ts)
        self.last_update = now
        self.accepted += 1
        if isinstance(msg, Tombstone):
            self.tombstones += 1
            self._tombstoned[address] = now
            self._forget_old_markers(now)
            if self.endpoints.pop(address, None) is not None:
                self._list = None
                self._safe(self.scheduler.on_endpoint_removed, address, now)
            return True
        self._tombstoned.pop(address, None)
        self.endpoints[address] = EndpointView(address, msg, now)
        self._list = None
        self._safe(self.scheduler.on_snapshot, msg, now)
        return True

    def _forget_old_markers(self, now: float) -> None:
        if len(self._tombstoned) < 64:
            return
        for address, at in list(self._tombstoned.items()):
            if now - at > TOMBSTONE_MEMORY_S:
                del self._tombstoned[address]
                self._last.pop(address, None)

    @staticmethod
    def _safe(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a scheduler bug must not stop the feed
            log.exception("scheduler hook failed", extra={"hook": getattr(fn, "__name__", "?")})

    # -- reading ------------------------------------------------------------------------
    def list(self) -> list[EndpointView]:
        """The endpoints, as a list rebuilt only after a change (the hot path reads it per request)."""
        if self._list is None:
            self._list = list(self.endpoints.values())
        return self._list

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
    """Keeps a :class:`PoolView` in sync with JetStream; re-subscribes after a reconnect."""

    def __init__(self, view: PoolView, opts: NatsOptions, stop: asyncio.Event | None = None) -> None:
        self.view = view
        self.opts = opts
        self.subjects = opts.subjects
        self.stop = stop or asyncio.Event()
        self.nc: Any = None
        self._sub: Any = None
        self._resync = asyncio.Event()
        self._last_sseq = 0
        self.connected = False
        self.connected_event = asyncio.Event()  # set once the first connection is up
        self.subscriptions = 0
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def subject(self) -> str:
        return self.subjects.endpoints_of_pool(self.view.namespace, self.view.pool)

    async def run(self) -> None:
        """Connect, subscribe, and re-subscribe on every reconnect; runs until cancelled."""
        self.nc = await connect(
            self.opts,
            on_disconnected=self._on_disconnected,
            on_reconnected=self._on_reconnected,
            stop=self.stop,
        )
        self.connected = True
        self.connected_event.set()
        try:
            while True:
                try:
                    await self._subscribe()
                except Exception as exc:
                    log.warning("endpoint subscription failed; retrying", extra={"error": repr(exc)})
                    await asyncio.sleep(0.5)
                    continue
                await self._resync.wait()
                self._resync.clear()
                log.info("re-subscribing to endpoint snapshots after reconnect")
        finally:
            await self._unsubscribe()
            if self.nc is not None and not self.nc.is_closed:
                await self.nc.close()

    async def _on_disconnected(self) -> None:
        self.connected = False

    async def _on_reconnected(self) -> None:
        self.connected = True
        self._resync.set()

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                pass

    async def _subscribe(self) -> None:
        await self._unsubscribe()
        js = self.nc.jetstream()
        await ensure_streams(js, self.subjects)
        # Subjects the stream holds for this pool right now: zero means the bootstrap is
        # trivially complete (no message would ever say num_pending == 0).
        info = await js.stream_info(self.subjects.endpoint_stream, subjects_filter=self.subject)
        held = len(info.state.subjects or {}) if info.state else 0
        self._sub = await js.subscribe(
            self.subject,
            cb=self._on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=2.0,
        )
        self.subscriptions += 1
        if held == 0:
            self._bootstrapped()
        else:
            self._watchdog = asyncio.create_task(self._bootstrap_watchdog(self._sub))

    async def _bootstrap_watchdog(self, sub: Any) -> None:
        """Covers last values that expired between ``stream_info`` and the subscription."""
        for _ in range(100):
            if self.view.bootstrapped or sub is not self._sub:
                return
            await asyncio.sleep(0.1)
            try:
                ci = await sub.consumer_info()
            except Exception:
                continue
            if ci.num_pending == 0 and self._last_sseq >= (ci.delivered.stream_seq or 0):
                self._bootstrapped()
                return

    def _bootstrapped(self) -> None:
        if not self.view.bootstrapped:
            self.view.bootstrapped = True
            log.info("pool view bootstrapped", extra={"endpoints": len(self.view.endpoints)})

    async def _on_msg(self, msg: Any) -> None:
        self.view.handle(msg.data)
        try:
            md = msg.metadata
        except Exception:
            return
        self._last_sseq = max(self._last_sseq, md.sequence.stream)
        if md.num_pending == 0:
            self._bootstrapped()
