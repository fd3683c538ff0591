"""The bus seam: what InferGate's services need from NATS, and an in-memory stand-in.

Services talk to a :class:`Bus`, never to a NATS client, the way an httpx client talks to
a transport: :class:`shared.natsbus.NatsBus` is the real one (nats-py + JetStream), and
:class:`MemoryBus` is a test and simulation tool (the discrete-event simulation runs the
real picker code over it, with a delay model). Services and integration tests keep the
real NATS.

The interface is what the services use, no more:

* :meth:`Bus.publish` - fire-and-forget. A subject covered by one of InferGate's streams
  is also stored: endpoint subjects keep their last value, event subjects their recent
  history (``shared.natsconn.StreamSettings``).
* :meth:`Bus.subscribe` - live messages only.
* :meth:`Bus.follow_last_values` - the last stored value of every subject under a
  wildcard, then live updates; the subscription's ``caught_up`` is set once the stored
  values are delivered (the bootstrap).
* :meth:`Bus.replay` - stored messages since a wall-clock time, in publish order.
* :meth:`Bus.ensure_streams`, ``connected``, :meth:`Bus.on_reconnect`, :meth:`Bus.close`.

Handlers are plain synchronous functions ``handler(subject, payload)``: they run on the
event loop and must not block. What to *do* with the messages (ordering, duplicates,
bootstrap and re-subscription) is :mod:`shared.feed`'s job, the same for every service.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from typing import Protocol, runtime_checkable

from shared.natsconn import StreamSettings
from shared.subjects import Subjects

__all__ = [
    "Bus",
    "BusError",
    "Handler",
    "LastValues",
    "MemoryBus",
    "NoStream",
    "Subscription",
    "raise_if_cancelling",
    "subject_matches",
]

Handler = Callable[[str, bytes], None]


class BusError(Exception):
    """The bus could not do it now (disconnected, server error); the caller may retry."""


class NoStream(BusError):
    """There is no stream to replay from (JetStream disabled, or the stream is gone)."""


@runtime_checkable
class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


@runtime_checkable
class LastValues(Subscription, Protocol):
    caught_up: asyncio.Event  # every stored last value has been delivered


@runtime_checkable
class Bus(Protocol):
    subjects: Subjects

    @property
    def connected(self) -> bool: ...

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on the event loop) after every reconnection."""

    async def publish(self, subject: str, data: bytes) -> None: ...

    async def subscribe(self, subject: str, handler: Handler) -> Subscription: ...

    async def follow_last_values(
        self, subject: str, handler: Handler, stream: str | None = None
    ) -> LastValues:
        """The stored last value of every subject under ``subject`` (in ``stream``, else the endpoints')."""

    async def replay(self, subject: str, since: float, handler: Handler) -> int:
        """Feed every stored message on ``subject`` newer than ``since``; return how many.

        Raises :class:`NoStream` when nothing stores the subject, :class:`BusError` on failure.
        """

    async def ensure_streams(self) -> None: ...

    async def close(self) -> None: ...


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    nats-py's ``Client._flush_pending`` (run by every publish) catches ``CancelledError``
    and returns normally, so a task cancelled at that moment would go on looping and a
    shutdown would wait for the Supervisor's timeout. Loops call this after every bus
    call; ``Task.cancelling()`` still counts the swallowed request.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@lru_cache(maxsize=8192)  # few patterns x the subjects of one pool; bounded all the same
def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a trailing ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


# -- the in-memory bus ----------------------------------------------------------------------

Delay = float | Callable[[str], float]
CallLater = Callable[[float, Callable[[], None]], None]


class _Sub:
    __slots__ = ("bus", "caught_up", "handler", "pattern")

    def __init__(self, bus: MemoryBus, pattern: str, handler: Handler) -> None:
        self.bus = bus
        self.pattern = pattern
        self.handler = handler
        self.caught_up = asyncio.Event()

    async def unsubscribe(self) -> None:
        self.unsubscribe_nowait()

    def unsubscribe_nowait(self) -> None:
        if self in self.bus._subs:
            self.bus._subs.remove(self)


class MemoryBus:
    """A :class:`Bus` in one process: the stream semantics of NATS + JetStream, a delay model.

    Every publish is stored at once (the last value per endpoint subject; the history of
    event subjects for ``event_max_age_s``, by ``clock``) and delivered ``delay`` seconds
    later (a number, or a function of the subject) to the subscriptions that match it at
    publish time and still exist then, in publish order for equal delays.
    ``call_later(delay, fn)`` schedules a delivery: the running asyncio loop's by default,
    a simulation's event heap in the DES. With no delay delivery is synchronous.
    :meth:`set_connected` simulates an outage for tests.

    The ``*_nowait`` methods are the synchronous faces of the async interface, for code
    that runs without an event loop (the DES).
    """

    def __init__(
        self,
        subjects: Subjects | None = None,
        *,
        delay: Delay = 0.0,
        clock: Callable[[], float] = time.time,
        call_later: CallLater | None = None,
        streams: StreamSettings | None = None,
    ) -> None:
        self.subjects = subjects or Subjects()
        self._delay = delay
        self.clock = clock
        self._call_later = call_later
        self._event_max_age = (streams or StreamSettings()).event_max_age_s
        self._subs: list[_Sub] = []
        self._last: dict[str, bytes] = {}  # endpoint subject -> last payload, in store order
        self._history: deque[tuple[float, str, bytes]] = deque()
        self._on_reconnect: list[Callable[[], None]] = []
        self._connected = True
        self.published = 0

    # -- the Bus interface -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._on_reconnect.append(callback)

    async def publish(self, subject: str, data: bytes) -> None:
        self.publish_nowait(subject, data)

    async def subscribe(self, subject: str, handler: Handler) -> _Sub:
        return self.subscribe_nowait(subject, handler)

    async def follow_last_values(self, subject: str, handler: Handler, stream: str | None = None) -> _Sub:
        return self.follow_last_values_nowait(subject, handler)

    async def replay(self, subject: str, since: float, handler: Handler) -> int:
        self._require_connection()
        n = 0
        for ts, subj, data in list(self._history):
            if ts >= since and subject_matches(subject, subj):
                handler(subj, data)
                n += 1
        return n

    async def ensure_streams(self) -> None:
        self._require_connection()

    async def close(self) -> None:
        self._subs.clear()

    # -- synchronous faces -----------------------------------------------------------------

    def publish_nowait(self, subject: str, data: bytes) -> None:
        self._require_connection()
        self.published += 1
        kind = self.subjects.parse(subject)
        if kind is not None and kind.kind == "endpoint":
            self._last.pop(subject, None)  # re-inserted last: the stream's sequence order
            self._last[subject] = data
        elif kind is not None:
            now = self.clock()
            self._history.append((now, subject, data))
            while self._history and self._history[0][0] < now - self._event_max_age:
                self._history.popleft()
        # Like core NATS: delivered to the subscriptions that exist now (and still do then).
        targets = [sub for sub in self._subs if subject_matches(sub.pattern, subject)]
        if not targets:
            return
        delay = self._delay(subject) if callable(self._delay) else self._delay
        if delay <= 0:
            self._deliver(targets, subject, data)
        elif self._call_later is not None:
            self._call_later(delay, lambda: self._deliver(targets, subject, data))
        else:
            asyncio.get_running_loop().call_later(delay, self._deliver, targets, subject, data)

    def subscribe_nowait(self, subject: str, handler: Handler) -> _Sub:
        sub = _Sub(self, subject, handler)
        self._subs.append(sub)
        return sub

    def follow_last_values_nowait(self, subject: str, handler: Handler) -> _Sub:
        sub = self.subscribe_nowait(subject, handler)
        for subj, data in list(self._last.items()):
            if subject_matches(subject, subj):
                handler(subj, data)
        sub.caught_up.set()
        return sub

    def set_connected(self, connected: bool) -> None:
        """Simulate an outage (``False``) and the reconnection (``True``: callbacks run)."""
        was, self._connected = self._connected, connected
        if connected and not was:
            for cb in list(self._on_reconnect):
                cb()

    def _require_connection(self) -> None:
        if not self._connected:
            raise BusError("disconnected")

    def _deliver(self, targets: list[_Sub], subject: str, data: bytes) -> None:
        for sub in targets:
            if sub in self._subs:
                sub.handler(subject, data)


class VirtualTime:
    """A minimal event heap with a clock, the ``call_later`` of a :class:`MemoryBus` without asyncio.

    Ties run in scheduling order, so a simulation built on it is a pure function of its inputs.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (self.now + delay, next(self._seq), fn))

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            at, _, fn = heapq.heappop(self._heap)
            self.now = at
            fn()
        self.now = max(self.now, t)
