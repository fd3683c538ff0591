"""Publishing endpoint snapshots: the latest message per endpoint, onto the bus.

:class:`Publisher` holds at most one pending message per endpoint (a dict: bounded by
the number of endpoints, and updates coalesce), so scrape tasks never wait on the bus.
Tombstones wait apart, per (endpoint, address), and go out first. ``seq`` counts per
endpoint *address* for the life of the process. While the bus is down nothing is handed
to it; after a (re)connect the streams are (re-)created and every endpoint's latest
snapshot is republished.

The publisher talks to a :class:`shared.bus.Bus` (``publish``, ``ensure_streams``,
``connected``, ``on_reconnect``): :class:`shared.natsbus.NatsBus` in the service,
:class:`shared.bus.MemoryBus` in unit tests. Messages are core publishes (no per-message
JetStream ack on the hot path); the ``INFERGATE_ENDPOINTS`` stream captures them and keeps
the last one per subject, which is how a starting reader bootstraps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from collector.metrics import CollectorMetrics
from collector.targets import Key
from shared.bus import Bus, raise_if_cancelling
from shared.schemas import EndpointSnapshot, Tombstone, encode
from shared.subjects import Subjects

log = logging.getLogger(__name__)
# Reasons of a publish that re-sends every endpoint (start, reconnect): kept when a fresher
# snapshot of the same endpoint replaces the queued one before it goes out.
RESYNC_REASONS = frozenset({"connect", "reconnect"})


class Publisher:
    """Publishes the latest message per endpoint; never queues more than one per endpoint.

    Offers are taken from the start; the bus is :meth:`attach`-ed once it is connected
    (until then everything waits, the latest per endpoint).
    """

    def __init__(
        self,
        subjects: Subjects,
        epoch: str,
        identity: str,
        metrics: CollectorMetrics,
        *,
        spawn: Callable[[str, Callable[[], Awaitable[None]]], object] | None = None,
    ) -> None:
        self.bus: Bus | None = None
        self.subjects = subjects
        self.epoch = epoch
        self.identity = identity
        self.metrics = metrics
        # runs a one-off background job (the reconnect resync); the service passes its
        # supervisor's spawn so the job is cancelled with everything else
        self._spawn = spawn or (lambda name, factory: asyncio.create_task(factory(), name=name))
        self.pending: dict[Key, tuple[EndpointSnapshot, str]] = {}
        # Tombstones wait apart, per (subject, address), and go out before snapshots: a newer
        # snapshot on the same subject (a pod that came back, or moved to a new IP) must not
        # coalesce its predecessor's tombstone away.
        self.pending_tombs: dict[tuple[Key, str], Tombstone] = {}
        self.latest: dict[Key, EndpointSnapshot] = {}
        # ``seq`` counts per endpoint *address* (pod IP x port), as receivers order updates
        # per address: a pod that reuses a departed pod's IP continues its sequence instead
        # of starting below the departed pod's tombstone.
        self.seq: dict[str, int] = {}
        self._subject: dict[Key, str] = {}
        self._wake = asyncio.Event()
        self._resyncing = False
        # Set from a reconnect until its resync has re-created the streams: a restarted server
        # may have lost them, and a tombstone published into no stream is never stored (it is
        # not republished: removed endpoints are not in ``latest``).
        self._held = False
        self.streams_ready = False
        self.published = 0

    def attach(self, bus: Bus) -> None:
        """Publish over ``bus`` from now on, and republish everything after each reconnect."""
        if bus is not self.bus:  # a bus kept across a stop/start is registered once
            self.bus = bus
            bus.on_reconnect(self.on_reconnected)

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.connected

    def subject(self, key: Key) -> str:
        subj = self._subject.get(key)
        if subj is None:
            ns, pool, pod, port = key
            subj = self._subject[key] = self.subjects.endpoint(ns, pool, pod, port)
        return subj

    # -- called synchronously by scrape tasks and discovery ------------------------------
    def offer(self, key: Key, snap: EndpointSnapshot, reason: str | None) -> None:
        """Record the latest snapshot; queue it for publishing when ``reason`` is set."""
        self.latest[key] = snap
        if reason is None:
            return
        if not self.connected:
            self.metrics.publish_deferred.inc()
        prev = self.pending.get(key)
        if prev is not None and prev[1] in RESYNC_REASONS:
            reason = prev[1]  # a fresher snapshot replaces a queued resync, which stays one
        self.pending[key] = (snap, reason)
        self._wake.set()

    def remove(self, key: Key, tombstone: Tombstone) -> None:
        """The endpoint left: its unpublished snapshot is dropped, its tombstone queued."""
        self.latest.pop(key, None)
        self.pending.pop(key, None)
        self.pending_tombs[(key, tombstone.address)] = tombstone
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self.pending) + len(self.pending_tombs)

    # -- the task ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.drain()

    async def drain(self) -> None:
        """Publish everything pending (tombstones first), as long as the bus is up."""
        bus = self.bus
        while self.pending_tombs or self.pending:
            if bus is None or not bus.connected or self._held:
                return  # keep the latest per endpoint; the reconnect's resync wakes us
            if self.pending_tombs:
                tkey = next(iter(self.pending_tombs))
                key = tkey[0]
                msg: EndpointSnapshot | Tombstone = self.pending_tombs.pop(tkey)
                reason = "removed"
            else:
                key = next(iter(self.pending))
                msg, reason = self.pending.pop(key)
            seq = self.seq.get(msg.address, 0) + 1
            msg.seq, msg.epoch, msg.collector = seq, self.epoch, self.identity
            try:
                await bus.publish(self.subject(key), encode(msg))
            except Exception as exc:
                self.metrics.publish_errors.inc()
                log.warning("publish failed; will retry", extra={"error": repr(exc), "endpoint": key})
                if isinstance(msg, Tombstone):
                    self.pending_tombs.setdefault((key, msg.address), msg)
                else:
                    self.pending.setdefault(key, (msg, reason))
                await asyncio.sleep(0.1)
                self._wake.set()
                return
            raise_if_cancelling()  # nats-py's publish can swallow a cancellation
            self.seq[msg.address] = seq
            self.published += 1
            kind = "tombstone" if isinstance(msg, Tombstone) else "snapshot"
            self.metrics.publishes.labels(kind, reason).inc()

    # -- connection events ------------------------------------------------------------------
    async def on_connected(self) -> None:
        await self.resync("connect")

    def on_reconnected(self) -> None:
        # Do not block the bus's callback: the streams may have gone with a restarted server,
        # so re-create them (a background job), then republish every endpoint.
        if not self._resyncing:
            self._resyncing = True
            self._held = True
            self._spawn("collector-resync", self._resync_after_reconnect)

    async def _resync_after_reconnect(self) -> None:
        try:
            await self.resync("reconnect")
        finally:
            self._resyncing = False
            self._held = False  # publish what waited, into the re-created streams
            self._wake.set()

    async def resync(self, reason: str, *, ensure: bool = True) -> None:
        """(Re-)create the streams, then queue every endpoint's latest snapshot."""
        if ensure:
            await self.ensure_streams()
        # Republish every endpoint (pending tombstones stay queued: removed keys are not in
        # ``latest``). Messages sent between the reconnect and now may have missed a
        # stream that the restarted server lost, so this pass is after ensure_streams.
        for key, snap in self.latest.items():
            self.pending[key] = (snap, reason)
        self._wake.set()

    async def ensure_streams(self, attempts: int = 3) -> bool:
        bus = self.bus
        if bus is None or not bus.connected:
            return False
        for attempt in range(attempts):
            try:
                await asyncio.wait_for(bus.ensure_streams(), 5.0)
                self.streams_ready = True
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.stream_errors.inc()
                log.warning(
                    "cannot create/update JetStream streams",
                    extra={"error": repr(exc), "attempt": attempt + 1},
                )
                await asyncio.sleep(0.5 * (attempt + 1))
        self.streams_ready = False
        return False
