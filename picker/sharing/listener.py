"""Following every peer's events and applying them to the local pool state.

A :class:`shared.feed.EventFeed` brings the events: live over the bus, and from the
event stream once at start (before :attr:`PeerListener.ready` is set) and after every
reconnect for the time this replica was away. All payloads go through one
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
requests are released at once, instead of at the in-flight TTL. The live replicas,
ordered by name, also give each replica its rank, which the scheduler reads from the pool state to keep
near-simultaneous decisions of different replicas apart. :meth:`PeerListener.check_peers`
is synchronous, so a simulation can call it in virtual time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from picker.hooks import AccountingHooks
from shared.bus import Bus, raise_if_cancelling
from shared.feed import EventFeed, Source
from shared.schemas import event_decoder
from shared.schemas import now as wall_now
from shared.subjects import Origin

from .applier import EventApplier
from .metrics import SharingMetrics
from .settings import SharingSettings

__all__ = ["PeerListener", "UnseenEstimate"]

log = logging.getLogger(__name__)


class _Claim(msgspec.Struct):
    """Only the publishing process's id of a message (the events are skipped, not built)."""

    instance: str = ""


_claim = msgspec.msgpack.Decoder(_Claim)
_MAX_RIVALS = 16  # rival instance ids remembered (each logged once)


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
        bus: Bus,
        namespace: str,
        pool: str,
        settings: SharingSettings,
        hooks: AccountingHooks,
        *,
        metrics: SharingMetrics | None = None,
        clock: Callable[[], float] = wall_now,
        manage_streams: bool = True,
        watch_interval_s: float = 0.1,
        instance: str | None = None,
    ) -> None:
        self.bus = bus
        # Our publisher's process id: a live batch on our subject with another id is a rival.
        self.instance = instance
        self.rivals: set[str] = set()
        self.settings = settings
        self.replica = settings.replica
        self.subject = bus.subjects.events_of_pool(namespace, pool)
        self.metrics = metrics or SharingMetrics()
        self.clock = clock
        self.applier = EventApplier(hooks, ttl=settings.dedup_ttl_s, clock=clock, metrics=self.metrics)
        ledger = self.applier.ledger
        self.metrics.tables(
            {
                "dedup_requests": (lambda: len(ledger), ledger.max_entries, lambda: ledger.evicted),
                # peers are forgotten peer_timeout after their last heartbeat
                "peers": (lambda: len(self.applier.last_seen), 0, lambda: 0),
                "rival_instances": (lambda: len(self.rivals), _MAX_RIVALS, lambda: 0),
            }
        )
        self.decoder = event_decoder(self._on_decode_error)
        self.feed = EventFeed(
            bus,
            self.subject,
            self.on_message,
            window_s=settings.replay_window_s,
            ready_timeout_s=settings.ready_timeout_s,
            manage_streams=manage_streams,
            on_replay=self._on_replay,
            clock=clock,
            watch_interval_s=watch_interval_s,
        )
        self.watch_interval = watch_interval_s
        self._rank = (0, 1)  # (index, count) last given to the pool state
        self.unseen = UnseenEstimate()

    @property
    def ready(self) -> asyncio.Event:
        return self.feed.ready

    @property
    def is_ready(self) -> bool:
        return self.feed.ready.is_set()

    @property
    def replayed(self) -> int:
        return self.feed.replayed

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the events (replay, then live) until cancelled; run it under a Supervisor."""
        await self.feed.run()

    async def watch_peers(self) -> None:
        """Check the peers' liveness every ``watch_interval`` once ready, until cancelled."""
        await self.feed.ready.wait()
        while True:
            await asyncio.sleep(self.watch_interval)
            if self.bus.connected:
                self.check_peers(self.clock())
            raise_if_cancelling()

    async def close(self) -> None:
        await self.feed.close()

    def _on_replay(self, reason: str, outcome: str, n: int) -> None:
        self.metrics.replays.labels(reason, outcome).inc()
        if reason == "start":  # whatever the outcome, the feed reports ready right after
            self.metrics.ready.set(1)

    # -- events ---------------------------------------------------------------------------

    def on_message(self, origin: Origin, data: bytes, source: Source) -> None:
        """Apply one payload from the feed (live, or one of the replays)."""
        if source != "start" and origin.name == self.replica:
            if source == "live" and self.instance is not None:
                self._check_claim(data)
            return  # our own traffic, already applied (a start replay rebuilds it after a restart)
        message = self.decoder.decode(data)
        if message is None:
            return
        if source == "live" and message.replica == self.replica:
            return
        src = "live" if source == "live" else "replay"
        if hasattr(message, "events"):
            self.applier.apply_batch(message, source=src)
        else:
            self.applier.apply_event(message, source=src)

    def _check_claim(self, data: bytes) -> None:
        """Count (and log once per rival) a live message under our name from another process.

        Two live replicas with one name skip each other's events as their own and both
        take the same rank: routing quality degrades silently, so say it loudly.
        """
        try:
            other = _claim.decode(data).instance
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if not other or other == self.instance:
            return
        self.metrics.name_conflicts.inc()
        if other in self.rivals or len(self.rivals) >= _MAX_RIVALS:
            return
        self.rivals.add(other)
        log.error(
            "another live picker uses this replica name: the two ignore each other's traffic; "
            "give each replica a unique --replica-name",
            extra={"replica": self.replica, "instance": self.instance, "rival_instance": other},
        )

    def _on_decode_error(self, data: bytes, exc: Exception) -> None:
        self.metrics.decode_errors.inc()
        log.debug("undecodable peer event dropped", extra={"bytes": len(data), "error": str(exc)})

    # -- liveness ---------------------------------------------------------------------------

    def check_peers(self, now: float) -> None:
        """Release silent peers' open requests; tell the pool state its rank and unseen estimate."""
        timeout = self.settings.peer_timeout_s
        if timeout > 0 and now - self.feed.connected_since >= timeout:
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
        """Tell the pool state its place among the live replicas (ordered by name) and how
        many peers' assignments it typically has not heard of yet.

        Every replica sorts the same names, so their places differ; the scheduler uses
        both to spread near-simultaneous choices (see ``MaxScoreChooser.peer_margin``).
        """
        names = sorted({*alive, self.replica})
        rank = (names.index(self.replica), len(names))
        self.metrics.peer_unseen.set(unseen)
        changed = rank != self._rank
        self._rank = rank
        self.metrics.peer_rank.set(rank[0])
        try:
            self.applier.hooks.set_peer_rank(rank[0], rank[1], unseen)
        except Exception:  # a state bug must not stop the liveness watch
            if changed:
                log.exception("setting the peer rank failed", extra={"rank": rank[0], "replicas": rank[1]})
            return
        if changed:
            log.info("peer rank", extra={"rank": rank[0], "replicas": rank[1]})
