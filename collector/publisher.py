"""Publishing endpoint snapshots: the latest message per endpoint, onto the bus.

:class:`Publisher` holds at most one pending message per endpoint (a dict: bounded by
the number of endpoints, and updates coalesce), so scrape tasks never wait on the bus.
Tombstones wait apart, per (endpoint, address), and go out first. ``seq`` counts per
endpoint *address* for the life of the process. While the link is down nothing is handed
to it; after a (re)connect the streams are (re-)created and every endpoint's latest
snapshot is republished.

Everything the publisher needs from NATS is in :class:`NatsLink` (connect, publish,
ensure the JetStream streams, close): a bus implementation with the same members can be
dropped in without touching the publishing rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from collector.metrics import CollectorMetrics
from collector.targets import Key
from shared import natsconn
from shared.natsconn import NatsOptions, StreamSettings
from shared.schemas import EndpointSnapshot, Tombstone, encode
from shared.subjects import Subjects

log = logging.getLogger(__name__)


class Link(Protocol):
    """What the publisher needs from the bus."""

    @property
    def connected(self) -> bool: ...

    async def publish(self, subject: str, payload: bytes) -> None: ...

    async def ensure_streams(self) -> None: ...


class NatsLink:
    """The collector's NATS connection: core publishes plus the JetStream last-value streams.

    Messages are core NATS publishes (no per-message JetStream ack on the hot path); the
    ``INFERGATE_ENDPOINTS`` stream captures them because its subjects cover them and keeps
    the last one per subject, which is how a starting reader bootstraps.
    """

    def __init__(self, options: NatsOptions, stream_settings: StreamSettings) -> None:
        self.options = options
        self.subjects = options.subjects
        self.stream_settings = natsconn.with_replicas(stream_settings, options)
        self.nc: Any = None  # nats.aio.client.Client once connected

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def connect(self, *, on_reconnected: Callable[[], Awaitable[None]], stop: asyncio.Event) -> bool:
        """Connect, retrying until it works or ``stop`` is set (then False)."""
        try:
            nc = await natsconn.connect(
                self.options, on_disconnected=_nothing, on_reconnected=on_reconnected, stop=stop
            )
        except ConnectionError:
            return False  # stopped before NATS came up
        if stop.is_set():
            await nc.close()
            return False
        self.nc = nc
        return True

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.nc.publish(subject, payload)

    async def ensure_streams(self) -> None:
        await asyncio.wait_for(
            natsconn.ensure_streams(self.nc.jetstream(), self.subjects, self.stream_settings), 5.0
        )

    async def close(self) -> None:
        """Drain (flush what was handed over) and close; force-close if that hangs."""
        nc, self.nc = self.nc, None
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.drain(), 3.0)
        except Exception:
            with contextlib.suppress(Exception):
                await nc.close()


async def _nothing() -> None:
    """Nothing to do on a disconnect: the publisher checks the link before every publish."""


class Publisher:
    """Publishes the latest message per endpoint; never queues more than one per endpoint."""

    def __init__(
        self,
        link: Link,
        subjects: Subjects,
        epoch: str,
        identity: str,
        metrics: CollectorMetrics,
        *,
        spawn: Callable[[str, Callable[[], Awaitable[None]]], object] | None = None,
    ) -> None:
        self.link = link
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
        self.streams_ready = False
        self.published = 0

    @property
    def connected(self) -> bool:
        return self.link.connected

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
        """Publish everything pending (tombstones first), as long as the link is up."""
        link = self.link
        while self.pending_tombs or self.pending:
            if not link.connected:
                return  # keep the latest per endpoint; the reconnect wakes us
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
                await link.publish(self.subject(key), encode(msg))
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
            self.seq[msg.address] = seq
            self.published += 1
            kind = "tombstone" if isinstance(msg, Tombstone) else "snapshot"
            self.metrics.publishes.labels(kind, reason).inc()

    # -- connection events ------------------------------------------------------------------
    async def on_connected(self) -> None:
        await self.resync("connect")

    async def on_reconnected(self) -> None:
        # Do not block nats-py's callback: the streams may have gone with a restarted server,
        # so re-create them, then republish every endpoint.
        if not self._resyncing:
            self._resyncing = True
            self._spawn("collector-resync", self._resync_after_reconnect)

    async def _resync_after_reconnect(self) -> None:
        try:
            await self.resync("reconnect")
        finally:
            self._resyncing = False

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
        if not self.link.connected:
            return False
        for attempt in range(attempts):
            try:
                await self.link.ensure_streams()
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
