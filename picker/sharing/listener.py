"""Following every peer's events and applying them to the local scheduler.

Live events come through a core NATS subscription on the pool's event subjects
(lowest latency, and it keeps working if JetStream is unavailable). History comes from
the JetStream stream: once at start, before :attr:`PeerListener.ready` is set, and after
every reconnect for the time this replica was away. All payloads go through one
:class:`~shared.schemas.SafeDecoder` (bad ones are counted and dropped) and one
:class:`~.applier.EventApplier` (duplicates are ignored), so the three paths can
overlap freely.

Own events: live, this replica's own subject is skipped (the picker already applied its
own traffic). In the *start-up* replay they are included: a restarted replica with the
same name (a StatefulSet pod) lost its local state, and its previous incarnation's
assignments, with their completions, are exactly what rebuilds it. After a reconnect
they are skipped again, because the process kept its state.

Liveness: every replica publishes at least a heartbeat per second. A peer not heard from
for ``peer_timeout`` while this replica was connected is declared gone and its open
requests are released at once, instead of at the scheduler's TTL. The live replicas,
ordered by name, also give each replica its rank, which the scheduler uses to keep
near-simultaneous decisions of different replicas apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors

from shared.natsconn import StreamSettings, ensure_streams
from shared.schemas import Assignment, Completion, EventBatch, event_decoder
from shared.schemas import now as wall_now
from shared.subjects import Subjects

from .applier import EventApplier
from .metrics import SharingMetrics
from .replay import raise_if_cancelling, replay_events
from .settings import SharingSettings
from .sink import AccountingHooks

__all__ = ["PeerListener", "UnseenEstimate"]

log = logging.getLogger(__name__)

_RECONNECT_MARGIN_S = 2.0  # replay from this long before the last moment we knew we were connected


class UnseenEstimate:
    """How many peers' assignments this replica has typically not heard of yet.

    Little's law: the peers' assignment rate times the delay until one is applied here.
    The rate is a moving average (time constant ``tau``) of the live assignments applied
    between two calls; the delay is the applier's running mean.
    """

    def __init__(self, tau: float = 2.0) -> None:
        self.tau = tau
        self.rate = 0.0  # peers' assignments per second
        self._count = 0
        self._at: float | None = None

    def update(self, count: int, lag: float, now: float) -> float:
        """``count``: live assignments applied so far; returns the current estimate."""
        if self._at is None:
            self._count, self._at = count, now
        elif now > self._at:
            dt = now - self._at
            alpha = dt / self.tau if dt < self.tau else 1.0
            self.rate += ((count - self._count) / dt - self.rate) * alpha
            self._count, self._at = count, now
        return self.rate * lag


class PeerListener:
    def __init__(
        self,
        nc: Any,
        subjects: Subjects,
        namespace: str,
        pool: str,
        settings: SharingSettings,
        hooks: AccountingHooks,
        *,
        metrics: SharingMetrics | None = None,
        clock: Callable[[], float] = wall_now,
        manage_streams: bool = True,
        stream_settings: StreamSettings | None = None,
        watch_interval_s: float = 0.1,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.settings = settings
        self.replica = settings.replica
        self.subject = subjects.events_of_pool(namespace, pool)
        self.own_subject = subjects.events(namespace, pool, settings.replica)
        self.metrics = metrics or SharingMetrics()
        self.clock = clock
        self.applier = EventApplier(hooks, ttl=settings.dedup_ttl_s, clock=clock, metrics=self.metrics)
        self.decoder = event_decoder(self._on_decode_error)
        self.manage_streams = manage_streams
        self.stream_settings = stream_settings
        self.watch_interval = watch_interval_s
        self.ready = asyncio.Event()
        self._sub: Any = None
        self._reconnects = 0
        self._last_connected = 0.0  # wall time this replica was last seen connected
        self._connected_since = 0.0  # wall time of the current connection's start
        self.replayed = 0  # messages read from the stream, all replays together
        self._rank = (0, 1)  # (index, count) last given to the scheduler
        self.unseen = UnseenEstimate()

    @property
    def is_ready(self) -> bool:
        return self.ready.is_set()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe, replay history, report ready, then watch reconnects and peers' liveness.

        Run it under a :class:`~shared.service.Supervisor`; a restart after a crash keeps the
        subscription and the applied state.
        """
        if self._sub is None:
            self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg)
        self._reconnects = self._reconnect_count()
        self._connected_since = self._last_connected = self.clock()
        if not self.ready.is_set():
            await self._initial_replay()
        while True:
            await asyncio.sleep(self.watch_interval)
            await self._watch()
            raise_if_cancelling()

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
            self._sub = None

    async def _initial_replay(self) -> None:
        since = self.clock() - self.settings.replay_window_s
        try:
            await asyncio.wait_for(
                self._replay(since, include_own=True, reason="start"), self.settings.ready_timeout_s
            )
        except TimeoutError:
            self.metrics.replays.labels("start", "timeout").inc()
            log.warning(
                "event replay did not finish in time; ready with a partial view",
                extra={"timeout_s": self.settings.ready_timeout_s},
            )
        self.ready.set()
        self.metrics.ready.set(1)

    async def _replay(self, since: float, *, include_own: bool, reason: str) -> None:
        if self.manage_streams:
            try:
                js = self.nc.jetstream()
                await ensure_streams(js, self.subjects, self.stream_settings)
            except Exception as exc:
                log.warning("could not ensure the event stream", extra={"error": repr(exc)})

        def handle(subject: str, data: bytes) -> None:
            if include_own or subject != self.own_subject:
                self._apply_payload(data, "replay")

        try:
            n = await replay_events(
                self.nc.jetstream(), self.subjects.event_stream, self.subject, since, handle
            )
        except nats.js.errors.NotFoundError:
            self.metrics.replays.labels(reason, "no_stream").inc()
            log.warning("no event stream to replay from", extra={"stream": self.subjects.event_stream})
            return
        except (nats.errors.Error, OSError) as exc:
            self.metrics.replays.labels(reason, "error").inc()
            log.warning("event replay failed", extra={"error": repr(exc), "reason": reason})
            return
        self.replayed += n
        self.metrics.replays.labels(reason, "ok").inc()
        log.info("replayed peer events", extra={"messages": n, "reason": reason, "since": since})

    # -- live events ----------------------------------------------------------------------

    async def _on_msg(self, msg: Any) -> None:
        if msg.subject == self.own_subject:
            return
        self._apply_payload(msg.data, "live")

    def _apply_payload(self, data: bytes, source: str) -> None:
        message = self.decoder.decode(data)
        if message is None:
            return
        if isinstance(message, EventBatch):
            if message.replica == self.replica and source == "live":
                return
            self.applier.apply_batch(message, source=source)
        elif isinstance(message, Assignment | Completion):
            if message.replica == self.replica and source == "live":
                return
            self.applier.apply_event(message, source=source)

    def _on_decode_error(self, data: bytes, exc: Exception) -> None:
        self.metrics.decode_errors.inc()
        log.debug("undecodable peer event dropped", extra={"bytes": len(data), "error": str(exc)})

    # -- reconnects and liveness ------------------------------------------------------------

    def _reconnect_count(self) -> int:
        try:
            return int(self.nc.stats.get("reconnects", 0))
        except Exception:
            return 0

    async def _watch(self) -> None:
        now = self.clock()
        if not getattr(self.nc, "is_connected", False):
            return
        count = self._reconnect_count()
        if count != self._reconnects:
            self._reconnects = count
            since = max(self._last_connected - _RECONNECT_MARGIN_S, now - self.settings.replay_window_s)
            self._connected_since = now
            await self._replay(since, include_own=False, reason="reconnect")
            now = self.clock()
        self._last_connected = now
        self._check_peers(now)

    def _check_peers(self, now: float) -> None:
        timeout = self.settings.peer_timeout_s
        if timeout > 0 and now - self._connected_since >= timeout:
            gone = [
                peer
                for peer, last in self.applier.last_seen.items()
                if peer != self.replica and now - last > timeout
            ]
            for peer in gone:
                released = self.applier.forget_replica(peer, now)
                self.metrics.peers_lost.inc()
                log.info(
                    "peer replica silent; released its open requests",
                    extra={"peer": peer, "released": released, "timeout_s": timeout},
                )
        # Until a timeout has passed on this connection, every peer heard of counts as alive.
        alive = [peer for peer in self.applier.last_seen if peer != self.replica]
        self.metrics.peers_alive.set(len(alive))
        unseen = self.unseen.update(self.applier.live_assignments, self.applier.live_lag, now)
        self._set_rank(alive, unseen)

    def _set_rank(self, alive: list[str], unseen: float) -> None:
        """Tell the scheduler its place among the live replicas (ordered by name) and how
        many peers' assignments it typically has not heard of yet.

        Every replica sorts the same names, so their places differ; the scheduler uses
        both to spread near-simultaneous choices (see ``MaxScorePicker.peer_margin``).
        """
        names = sorted({*alive, self.replica})
        rank = (names.index(self.replica), len(names))
        self.metrics.peer_unseen.set(unseen)
        changed = rank != self._rank
        self._rank = rank
        self.metrics.peer_rank.set(rank[0])
        try:
            self.applier.hooks.set_peer_rank(rank[0], rank[1], unseen)
        except Exception:  # a scheduler bug must not stop the liveness watch
            if changed:
                log.exception("setting the peer rank failed", extra={"rank": rank[0], "replicas": rank[1]})
            return
        if changed:
            log.info("peer rank", extra={"rank": rank[0], "replicas": rank[1]})
