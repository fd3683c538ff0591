"""The rulebook for consuming the bus: one set of rules for every service that reads it.

The picker's pool view and peer sharing, the autoscaler and the discrete-event simulation
all read the same two message families; this module is where they agree on what a
message means. Subject layout stays in :mod:`shared.subjects` (consumers get a parsed
:class:`~shared.subjects.Origin`, never tokens), transport in :mod:`shared.bus`.

**Endpoint snapshots** (:class:`SnapshotOrder`). An endpoint is ``(namespace, pool,
address)``: the address is what receives traffic and what every in-flight count is
keyed by, so a pod that comes back under another IP is another endpoint, and a reused IP
is the same one (its last message decides). Per endpoint, a collector incarnation
(``epoch``) numbers its messages (``seq``):

* same ``epoch``, ``seq`` <= the last accepted one: a reordered or replayed message, dropped;
* another ``epoch``: accepted only when its ``ts`` is **strictly** newer than the last
  accepted message's. A different incarnation must prove it is newer; an equal
  timestamp proves nothing, and keeping what was accepted first means a replay of the
  stored last values after a re-subscription never changes the state.

A message whose ``ts`` is not a finite time at most ``MAX_FUTURE_S`` ahead of the reader's
clock is dropped as invalid (:meth:`SnapshotOrder.plausible`): one message stamped far in
the future would otherwise win against every later message of every other incarnation,
freezing the endpoint until that time. A collector whose clock runs that far ahead is
broken, and the readers' drop counters say so.

Tombstones obey the same order (a stale tombstone cannot remove a live endpoint) and leave
their mark, so a reordered snapshot older than the tombstone cannot resurrect the
endpoint; marks are forgotten after a memory each service chooses (longer than its
staleness, so whatever they would have rejected is stale anyway).

**Picker events** (:class:`EventLedger`). The same event reaches a reader twice (live and
again from a replay), and a completion can overtake its assignment. A request is
``(replica, request_id)``: two replicas may route requests with the same client id at
once, and they are two requests. Per request the ledger keeps the newest assignment time
and whether it completed, and applies:

* an assignment only if it is newer than what was seen and the request has not completed
  since; a *later* assignment under a completed id is a new request (clients reuse ids);
* a completion once per assignment; one that arrives first is remembered, so its late
  assignment is ignored instead of leaking load.

Times are the event's own ``ts``, clamped to the reader's clock (:func:`event_time`).
Ids are forgotten ``ttl`` after their last event (longer than the event stream's age, so
a replayed duplicate is still recognised).

**Feeds.** :class:`LastValueFeed` follows live updates on a core subscription, opened
first, and bootstraps from the stored last value of every endpoint (or of every subject of
another last-value stream: the pods' KV digests, :mod:`shared.kvstream`); once the stored
values are in, it releases their consumer. Live traffic therefore never waits on the stream: on a
NATS cluster that loses the node leading the endpoint stream, snapshots keep arriving while
the survivors elect a new leader. It re-subscribes after every reconnect (the stream may
have been recreated; the replayed last values fail the ordering test when already applied,
as does every message that arrives both live and stored).
:class:`EventFeed` follows live events and replays the stored history: ``window`` back at
start (then reports ready), and the gap after every reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Literal

from shared.bus import Bus, BusError, LastValues, NoStream, Subscription, raise_if_cancelling
from shared.schemas import Assignment, Completion, EndpointSnapshot, EventBatch, Tombstone
from shared.schemas import now as wall_now
from shared.subjects import Origin

__all__ = [
    "MAX_FUTURE_S",
    "EndpointKey",
    "EventFeed",
    "EventLedger",
    "LastValueFeed",
    "SnapshotOrder",
    "endpoint_key",
    "event_time",
    "events_of",
]

log = logging.getLogger(__name__)

EndpointKey = tuple[str, str, str]  # namespace, pool, address
MAX_FUTURE_S = 60.0  # how far ahead of the reader's clock a message's ts may be (clock skew)
Source = Literal["live", "start", "reconnect"]


def endpoint_key(msg: EndpointSnapshot | Tombstone) -> EndpointKey:
    return (msg.namespace, msg.pool, msg.address)


class SnapshotOrder:
    """Which endpoint messages to apply, per endpoint (see the module docstring)."""

    def __init__(self) -> None:
        self._last: dict[EndpointKey, tuple[str, int, float]] = {}  # (epoch, seq, ts) accepted
        self._gone: dict[EndpointKey, float] = {}  # tombstoned endpoints -> when, by the reader's clock

    @staticmethod
    def plausible(msg: EndpointSnapshot | Tombstone, now: float) -> bool:
        """Whether ``msg``'s time can be ordered: finite, and not beyond the allowed clock skew."""
        return math.isfinite(msg.ts) and msg.ts <= now + MAX_FUTURE_S

    def admit(self, msg: EndpointSnapshot | Tombstone, now: float) -> bool:
        """Whether ``msg`` is plausible and newer than what was applied for its endpoint; records it if so."""
        if not self.plausible(msg, now):
            return False
        key = endpoint_key(msg)
        last = self._last.get(key)
        if last is not None:
            epoch, seq, ts = last
            if msg.epoch == epoch:
                if msg.seq <= seq:
                    return False
            elif msg.ts <= ts:
                return False
        self._last[key] = (msg.epoch, msg.seq, msg.ts)
        if isinstance(msg, Tombstone):
            self._gone[key] = now
        else:
            self._gone.pop(key, None)
        return True

    @property
    def tombstoned(self) -> int:
        return len(self._gone)

    def forget_tombstones(self, before: float) -> int:
        """Forget the marks of endpoints tombstoned before ``before``; returns how many."""
        old = [key for key, at in self._gone.items() if at < before]
        for key in old:
            del self._gone[key]
            del self._last[key]
        return len(old)

    def forget(self, key: EndpointKey) -> None:
        """Forget an endpoint a service dropped for silence (its next message starts afresh)."""
        self._last.pop(key, None)
        self._gone.pop(key, None)


def event_time(ev: Assignment | Completion, now: float) -> float:
    """When the event happened, clamped so a peer whose clock runs ahead cannot place it in our future."""
    return min(ev.ts, now) if ev.ts > 0 else now


def events_of(message: Assignment | Completion | EventBatch, origin: Origin | None = None) -> list:
    """The events of one decoded message, with what the wire left implicit filled in.

    Batched events name neither their replica (the batch does) nor their namespace and pool
    (the subject does); after this every event is self-describing.
    """
    events = message.events if isinstance(message, EventBatch) else [message]
    replica = message.replica or (origin.name if origin is not None else "")
    for ev in events:
        if not ev.replica:
            ev.replica = replica
        if origin is not None:
            ev.namespace = ev.namespace or origin.namespace
            ev.pool = ev.pool or origin.pool
    return events


class _Seen:
    __slots__ = ("assigned_at", "done_at")

    def __init__(self) -> None:
        self.assigned_at = float("-inf")
        self.done_at: float | None = None


RequestKey = tuple[str, str]  # replica, request_id


class EventLedger:
    """Exactly-once application of assignments and completions (see the module docstring).

    Bounded: request ids come from clients, so at most ``max_entries`` requests are
    remembered; a new one past the bound forgets the oldest first (counted in
    :attr:`evicted`: a duplicate of it arriving later would be applied again, which the
    in-flight TTL absorbs).
    """

    def __init__(self, ttl: float = 60.0, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self.evicted = 0
        self._seen: dict[RequestKey, _Seen] = {}
        self._expiry: deque[tuple[float, RequestKey]] = deque()  # (event time, key), roughly ordered
        self._open: dict[str, dict[str, None]] = {}  # replica -> its open request ids (insertion-ordered)

    def __len__(self) -> int:
        return len(self._seen)

    def open_requests(self, replica: str) -> int:
        return len(self._open.get(replica, ()))

    def assign(self, replica: str, request_id: str, at: float) -> bool:
        """Whether to apply this assignment (False: a duplicate, or its completion came first)."""
        key = (replica, request_id)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._new(key)
        elif at <= seen.assigned_at:
            return False  # the same assignment again (or an older one)
        elif seen.done_at is not None and at <= seen.done_at:
            return False  # it already completed: re-opening it would leak
        seen.assigned_at = at
        seen.done_at = None
        self._open.setdefault(replica, {})[request_id] = None
        self._expiry.append((at, key))
        return True

    def complete(self, replica: str, request_id: str, at: float) -> bool:
        """Whether to apply this completion (False: the request already completed)."""
        key = (replica, request_id)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._new(key)  # completion first: remembered to reject the assignment
        elif seen.done_at is not None:
            return False
        else:
            self._open.get(replica, {}).pop(request_id, None)
        seen.done_at = max(at, seen.assigned_at)
        self._expiry.append((seen.done_at, key))
        return True

    def _new(self, key: RequestKey) -> _Seen:
        if len(self._seen) >= self.max_entries:
            self._evict()
        if len(self._expiry) > 4 * self.max_entries:  # re-touched keys leave stale entries
            live = self._seen
            self._expiry = deque(e for e in self._expiry if e[1] in live)
        seen = self._seen[key] = _Seen()
        return seen

    def _evict(self) -> None:
        """Forget the request with the oldest expiry entry, whatever its age."""
        q = self._expiry
        while q and len(self._seen) >= self.max_entries:
            _, key = q.popleft()
            seen = self._seen.pop(key, None)
            if seen is None:
                continue
            self.evicted += 1
            if seen.done_at is None:
                self._open.get(key[0], {}).pop(key[1], None)

    def forget_replica(self, replica: str, now: float) -> list[str]:
        """Close every open request of a replica that went silent; returns their ids."""
        open_ids = list(self._open.pop(replica, {}))
        for rid in open_ids:
            seen = self._seen.get((replica, rid))
            if seen is not None:
                seen.done_at = now
        return open_ids

    def expire(self, now: float) -> None:
        """Forget requests whose last event is older than the TTL (amortized O(1))."""
        q = self._expiry
        limit = now - self.ttl
        while q and q[0][0] <= limit:
            at, key = q.popleft()
            seen = self._seen.get(key)
            if seen is None:
                continue
            last = seen.done_at if seen.done_at is not None else seen.assigned_at
            if last > at:  # touched again later; a newer expiry entry exists
                continue
            del self._seen[key]
            if seen.done_at is None:
                self._open.get(key[0], {}).pop(key[1], None)


# -- feeds --------------------------------------------------------------------------------------


class LastValueFeed:
    """The last value of every subject under ``subject``, then live updates, across reconnects."""

    def __init__(
        self,
        bus: Bus,
        subject: str,
        handler: Callable[[str, bytes], None],
        *,
        manage_streams: bool = True,
        on_bootstrapped: Callable[[], None] | None = None,
        retry_s: float = 0.5,
        stream: str | None = None,
    ) -> None:
        self.bus = bus
        self.subject = subject
        self.handler = handler
        self.manage_streams = manage_streams
        self.on_bootstrapped = on_bootstrapped
        self.retry_s = retry_s
        self.stream = stream  # where the last values are kept (None: the endpoint stream)
        self.failures = 0  # consecutive failed bootstraps
        self.bootstrapped = asyncio.Event()
        self.subscriptions = 0
        self._live: Subscription | None = None
        self._sub: LastValues | None = None
        self._resync = asyncio.Event()
        bus.on_reconnect(self._resync.set)

    async def run(self) -> None:
        """Subscribe, and re-subscribe after every reconnect, until cancelled."""
        try:
            while True:
                try:
                    await self._subscribe()
                except Exception as exc:
                    # the first failure of a streak is worth a warning, not every retry
                    self.failures += 1
                    level = logging.WARNING if self.failures == 1 else logging.DEBUG
                    log.log(
                        level,
                        "last-value subscription failed; retrying",
                        extra={"error": repr(exc), "subject": self.subject},
                    )
                    await asyncio.sleep(self.retry_s)
                    continue
                self.failures = 0
                await self._await_bootstrap()
                await self._resync.wait()
                self._resync.clear()
                log.info("re-subscribing after a reconnect", extra={"subject": self.subject})
        finally:
            await self._unsubscribe()

    async def _subscribe(self) -> None:
        await self._release_stored()
        self._resync.clear()
        if self._live is None:  # opened once, before any bootstrap: no gap. The client restores
            # it after a reconnect by itself, and it needs no stream, so a failing bootstrap
            # (no stream leader yet) never interrupts live traffic.
            self._live = await self.bus.subscribe(self.subject, self.handler)
        if self.manage_streams:
            await self.bus.ensure_streams()
        if self.stream is None:
            self._sub = await self.bus.follow_last_values(self.subject, self.handler)
        else:
            self._sub = await self.bus.follow_last_values(self.subject, self.handler, stream=self.stream)
        self.subscriptions += 1

    async def _await_bootstrap(self) -> None:
        assert self._sub is not None
        done = asyncio.ensure_future(self._sub.caught_up.wait())
        resync = asyncio.ensure_future(self._resync.wait())
        try:
            await asyncio.wait([done, resync], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            resync.cancel()
        if not self._sub.caught_up.is_set():
            return
        await self._release_stored()  # the live subscription carries on alone
        if not self.bootstrapped.is_set():
            self.bootstrapped.set()
            if self.on_bootstrapped is not None:
                self.on_bootstrapped()

    async def _release_stored(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    async def _unsubscribe(self) -> None:
        await self._release_stored()
        live, self._live = self._live, None
        if live is not None:
            await live.unsubscribe()


EventHandler = Callable[[Origin, bytes, Source], None]


class EventFeed:
    """Live picker events plus their stored history, so a reader misses nothing it can recover.

    ``handler(origin, payload, source)`` gets every message, ``source`` saying where it came
    from (``live``, the ``start`` replay, or a ``reconnect`` replay): readers that must not
    apply their own traffic twice need to know. Duplicates across the three are expected;
    an :class:`EventLedger` makes them harmless. ``on_replay(reason, outcome, messages)``
    reports each replay (outcome ``ok``, ``no_stream``, ``error`` or ``timeout``).
    """

    RECONNECT_MARGIN_S = 2.0  # replay from this long before the last moment we knew we were connected

    def __init__(
        self,
        bus: Bus,
        subject: str,
        handler: EventHandler,
        *,
        window_s: float = 30.0,
        ready_timeout_s: float = 10.0,
        manage_streams: bool = True,
        on_replay: Callable[[str, str, int], None] | None = None,
        clock: Callable[[], float] = wall_now,
        watch_interval_s: float = 0.1,
    ) -> None:
        self.bus = bus
        self.subject = subject
        self.handler = handler
        self.window = window_s
        self.ready_timeout = ready_timeout_s
        self.manage_streams = manage_streams
        self.on_replay = on_replay
        self.clock = clock
        self.watch_interval = watch_interval_s
        self.ready = asyncio.Event()
        self.replayed = 0  # messages read back, all replays together
        self.unparsed = 0  # messages on subjects outside the layout, dropped
        self.connected_since = 0.0  # wall time the current connection started
        self._last_connected = 0.0
        self._reconnected = False
        self._sub: Subscription | None = None
        bus.on_reconnect(self._on_reconnect)

    def _on_reconnect(self) -> None:
        self._reconnected = True

    async def run(self) -> None:
        """Subscribe, replay the window, report ready, then replay the gap after every reconnect.

        Run it under a :class:`~shared.service.Supervisor`; a restart keeps the subscription.
        """
        if self._sub is None:
            self._sub = await self.bus.subscribe(self.subject, self.live)
        self.connected_since = self._last_connected = self.clock()
        if not self.ready.is_set():
            await self._initial_replay()
        while True:
            await asyncio.sleep(self.watch_interval)
            await self._watch()
            raise_if_cancelling()

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    def live(self, subject: str, data: bytes) -> None:
        """The live subscription's handler (public: a simulation subscribes it itself)."""
        self._dispatch(subject, data, "live")

    def _dispatch(self, subject: str, data: bytes, source: Source) -> None:
        origin = self.bus.subjects.parse(subject)
        if origin is None or origin.kind != "events":
            self.unparsed += 1
            return
        self.handler(origin, data, source)

    async def _initial_replay(self) -> None:
        since = self.clock() - self.window
        try:
            await asyncio.wait_for(self.replay(since, "start"), self.ready_timeout)
        except TimeoutError:
            self._report("start", "timeout", 0)
            log.warning(
                "event replay did not finish in time; ready with a partial view",
                extra={"timeout_s": self.ready_timeout},
            )
        self.ready.set()

    async def replay(self, since: float, reason: Literal["start", "reconnect"]) -> int:
        """Read back the stored events newer than ``since``; failures are reported, not raised."""
        if self.manage_streams:
            try:
                await self.bus.ensure_streams()
            except Exception as exc:
                log.warning("could not ensure the event stream", extra={"error": repr(exc)})
        try:
            n = await self.bus.replay(self.subject, since, lambda s, d: self._dispatch(s, d, reason))
        except NoStream:
            self._report(reason, "no_stream", 0)
            log.warning("no event stream to replay from", extra={"subject": self.subject})
            return 0
        except BusError as exc:
            self._report(reason, "error", 0)
            log.warning("event replay failed", extra={"error": repr(exc), "reason": reason})
            return 0
        self.replayed += n
        self._report(reason, "ok", n)
        log.info("replayed events", extra={"messages": n, "reason": reason, "since": since})
        return n

    def _report(self, reason: str, outcome: str, n: int) -> None:
        if self.on_replay is not None:
            self.on_replay(reason, outcome, n)

    async def _watch(self) -> None:
        if not self.bus.connected:
            return
        now = self.clock()
        if self._reconnected:
            self._reconnected = False
            since = max(self._last_connected - self.RECONNECT_MARGIN_S, now - self.window)
            self.connected_since = now
            await self.replay(since, "reconnect")
            now = self.clock()
        self._last_connected = now
