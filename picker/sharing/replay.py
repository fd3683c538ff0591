"""Reading recent picker events back from the ``<PREFIX>_EVENTS`` JetStream stream.

A replica that starts (or comes back after a NATS outage) has missed events that its
peers published. The stream keeps them for its ``max_age`` (30 s), so an ephemeral
pull consumer with ``deliver_policy=by_start_time`` reads them back in stream order,
which is publish order per replica: an assignment is always applied before its
completion. The replay stops at the stream's last sequence as of the start of the
replay; everything after that comes through the live subscription, and the overlap is
harmless because the :class:`~.applier.EventApplier` is idempotent.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

__all__ = ["raise_if_cancelling", "replay_events"]

log = logging.getLogger(__name__)


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    nats-py's ``Client._flush_pending`` (run by every publish and request) catches
    ``CancelledError`` and returns normally, so a task cancelled at that moment would go
    on looping and a shutdown would wait for the Supervisor's timeout. Loops call this
    after every NATS call; ``Task.cancelling()`` still counts the swallowed request.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def replay_events(
    js: JetStreamContext,
    stream: str,
    subject: str,
    since: float,
    handle: Callable[[str, bytes], None],
    *,
    fetch_batch: int = 512,
    fetch_timeout: float = 1.0,
) -> int:
    """Feed ``handle(subject, payload)`` every stored message on ``subject`` newer than ``since``.

    Returns the number of messages read. Raises ``nats.js.errors.NotFoundError`` when the
    stream does not exist, and NATS errors when the server goes away mid-replay.
    """
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
                msgs = await sub.fetch(fetch_batch, timeout=fetch_timeout)
            except nats.errors.TimeoutError:
                return read  # nothing left within the window (messages aged out meanwhile)
            raise_if_cancelling()
            for msg in msgs:
                read += 1
                handle(msg.subject, msg.data)
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
