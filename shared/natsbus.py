"""The :class:`~shared.bus.Bus` over a real NATS server: core NATS for live traffic, JetStream
for the stored parts (last value per endpoint, recent event history).

:meth:`NatsBus.connect` reuses :func:`shared.natsconn.connect` (retry the first connection,
then let nats-py reconnect forever). The last-value subscription is a JetStream ordered
consumer with deliver policy ``LAST_PER_SUBJECT``; its bootstrap is complete when a
message reports ``num_pending == 0``, at once when the stream holds nothing for the
subject, or (a watchdog) when the consumer has nothing pending any more. A replay is an
ephemeral pull consumer with ``deliver_policy=by_start_time`` that stops at the stream's
last sequence as of its start; the overlap with live traffic is the consumer's to ignore
(:class:`shared.feed.EventLedger`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.bus import BusError, Handler, NoStream, raise_if_cancelling
from shared.natsconn import NatsOptions, StreamSettings, connect, ensure_streams, with_replicas
from shared.subjects import Subjects

__all__ = ["NatsBus"]

log = logging.getLogger(__name__)

# The last-value consumer's idle heartbeat. nats-py recreates an ordered consumer after two
# missed heartbeats (and retries at that pace), so this bounds how long a bootstrap stalls
# when the server holding the consumer dies: on a NATS cluster, the stream's leader node.
# (Live traffic does not wait on it: LastValueFeed follows it on a core subscription.)
LIVE_HEARTBEAT_S = 0.5
# JetStream API calls that (re)build a subscription. A stream without a leader (a cluster
# electing a new one after a node loss) answers nothing; a short timeout lets the caller's
# retry loop get through soon after the election instead of waiting out nats-py's 5 s.
JS_API_TIMEOUT_S = 2.0


class _NatsSub:
    def __init__(self, sub: Any = None) -> None:
        self.sub = sub
        self.caught_up = asyncio.Event()
        self.last_sseq = 0
        self.watchdog: asyncio.Task[None] | None = None

    async def unsubscribe(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        sub, self.sub = self.sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be gone
                pass


class NatsBus:
    """A connected NATS client behind the :class:`~shared.bus.Bus` interface."""

    def __init__(
        self, nc: NATS | None, subjects: Subjects, stream_settings: StreamSettings | None = None
    ) -> None:
        self.nc: Any = nc  # the raw client, for what the Bus does not cover (tests, tools)
        self.subjects = subjects
        self.stream_settings = stream_settings
        self._on_reconnect: list[Callable[[], None]] = []
        self._on_disconnect: list[Callable[[], None]] = []

    @classmethod
    async def connect(
        cls,
        opts: NatsOptions,
        *,
        stop: asyncio.Event | None = None,
        stream_settings: StreamSettings | None = None,
    ) -> NatsBus:
        """Connect (retrying until NATS answers or ``stop`` is set) and wrap the client."""
        bus = cls(None, opts.subjects, with_replicas(stream_settings, opts))
        bus.nc = await connect(
            opts, on_disconnected=bus._disconnected, on_reconnected=bus._reconnected, stop=stop
        )
        return bus

    # -- connection state --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return bool(self.nc is not None and self.nc.is_connected)

    @property
    def reconnects(self) -> int:
        try:
            return int(self.nc.stats.get("reconnects", 0))
        except Exception:
            return 0

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._on_reconnect.append(callback)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        self._on_disconnect.append(callback)

    async def _reconnected(self) -> None:
        for cb in list(self._on_reconnect):
            cb()

    async def _disconnected(self) -> None:
        for cb in list(self._on_disconnect):
            cb()

    # -- live traffic --------------------------------------------------------------------------

    async def publish(self, subject: str, data: bytes) -> None:
        try:
            await self.nc.publish(subject, data)
        except (nats.errors.Error, OSError) as exc:
            raise BusError(repr(exc)) from exc

    async def subscribe(self, subject: str, handler: Handler) -> _NatsSub:
        async def cb(msg: Any) -> None:
            handler(msg.subject, msg.data)

        return _NatsSub(await self.nc.subscribe(subject, cb=cb))

    # -- stored traffic ------------------------------------------------------------------------

    async def ensure_streams(self) -> None:
        js = self.nc.jetstream(timeout=JS_API_TIMEOUT_S)
        await ensure_streams(js, self.subjects, self.stream_settings)

    async def follow_last_values(self, subject: str, handler: Handler, stream: str | None = None) -> _NatsSub:
        js = self.nc.jetstream(timeout=JS_API_TIMEOUT_S)
        stream = stream or self.subjects.endpoint_stream
        # Subjects the stream holds right now: zero means the bootstrap is trivially complete
        # (no message would ever say num_pending == 0).
        info = await js.stream_info(stream, subjects_filter=subject)
        held = len(info.state.subjects or {}) if info.state else 0
        out = _NatsSub()

        async def cb(msg: Any) -> None:
            handler(msg.subject, msg.data)
            try:
                md = msg.metadata
            except Exception:
                return
            out.last_sseq = max(out.last_sseq, md.sequence.stream)
            if md.num_pending == 0:
                out.caught_up.set()

        out.sub = await js.subscribe(
            subject,
            stream=stream,  # named: no stream lookup by subject, no
            cb=cb,  # need for the STREAM.NAMES permission on a locked-down server
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=LIVE_HEARTBEAT_S,
        )
        if held == 0:
            out.caught_up.set()
        else:
            out.watchdog = asyncio.create_task(self._bootstrap_watchdog(out))
        return out

    @staticmethod
    async def _bootstrap_watchdog(out: _NatsSub) -> None:
        """Covers last values that expired between ``stream_info`` and the subscription."""
        for _ in range(100):
            if out.caught_up.is_set() or out.sub is None:
                return
            await asyncio.sleep(0.1)
            try:
                ci = await out.sub.consumer_info()
            except Exception:
                continue
            if ci.num_pending == 0 and out.last_sseq >= (ci.delivered.stream_seq or 0):
                out.caught_up.set()
                return

    async def replay(
        self,
        subject: str,
        since: float,
        handler: Handler,
        *,
        fetch_batch: int = 512,
        fetch_timeout: float = 1.0,
    ) -> int:
        stream = self.subjects.event_stream
        try:
            return await self._replay(stream, subject, since, handler, fetch_batch, fetch_timeout)
        except nats.js.errors.NotFoundError as exc:
            raise NoStream(stream) from exc
        except (nats.errors.Error, OSError) as exc:
            raise BusError(repr(exc)) from exc

    async def _replay(
        self, stream: str, subject: str, since: float, handler: Handler, batch: int, timeout: float
    ) -> int:
        js = self.nc.jetstream()
        info = await js.stream_info(stream)
        end_seq = info.state.last_seq
        if info.state.messages == 0 or end_seq == 0:
            return 0
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.datetime.fromtimestamp(max(0.0, since), tz=datetime.UTC),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
        read = 0
        name = ""
        try:
            cinfo = await sub.consumer_info()
            name = cinfo.name
            if cinfo.num_pending == 0:
                return 0
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=timeout)
                except nats.errors.TimeoutError:
                    return read  # nothing left within the window (messages aged out meanwhile)
                raise_if_cancelling()
                for msg in msgs:
                    read += 1
                    handler(msg.subject, msg.data)
                last = msgs[-1].metadata
                if last.num_pending == 0 or last.sequence.stream >= end_seq:
                    return read
        finally:
            try:
                await sub.unsubscribe()
                if name:
                    await js.delete_consumer(stream, name)
            except Exception:  # the inactive threshold removes it anyway
                pass

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
