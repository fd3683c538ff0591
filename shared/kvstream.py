"""Where KV digests are kept: a JetStream stream holding the last digest per pod.

The collector calls :func:`ensure_kv_stream` (idempotent, every collector may) and the
picker :func:`follow_kv_digests`: the last digest of every pod under a wildcard, then live
ones, through a JetStream ordered consumer (``LAST_PER_SUBJECT``), so a starting replica
converges without history. Digests expire after ``max_age_s``: a dead collector's pods
drop out of the precise index by themselves. Over a bus without JetStream (the in-memory
bus of unit tests and the simulation), digests are followed live only.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.bus import Bus, Handler, Subscription

__all__ = ["DIGEST_MAX_AGE_S", "ensure_kv_stream", "follow_kv_digests"]

log = logging.getLogger(__name__)

DIGEST_MAX_AGE_S = 30.0


async def ensure_kv_stream(bus: Bus, max_age_s: float = DIGEST_MAX_AGE_S) -> bool:
    """Create or update the digest stream; False when the bus has no JetStream."""
    nc: Any = getattr(bus, "nc", None)
    if nc is None:
        return False
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    settings = getattr(bus, "stream_settings", None)
    cfg = StreamConfig(
        name=bus.subjects.kv_stream,
        subjects=[bus.subjects.all_kv_digests()],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.MEMORY,
        max_msgs_per_subject=1,
        max_age=max_age_s,
        discard=DiscardPolicy.OLD,
        num_replicas=getattr(settings, "replicas", 1) or 1,
    )
    js = nc.jetstream(timeout=2.0)
    try:
        await js.stream_info(cfg.name)
    except NotFoundError:
        try:
            await js.add_stream(cfg)
            log.info("created jetstream stream", extra={"stream": cfg.name})
            return True
        except Exception:  # another collector won the race
            pass
    await js.update_stream(cfg)
    return True


class _Both:
    """The live core subscription and the one-shot JetStream bootstrap, as one subscription."""

    def __init__(self, live: Subscription, boot: Any) -> None:
        self.live = live
        self.boot = boot

    async def unsubscribe(self) -> None:
        await self.live.unsubscribe()
        await self.drop_boot()

    async def drop_boot(self) -> None:
        boot, self.boot = self.boot, None
        if boot is not None:
            try:
                await boot.unsubscribe()
            except Exception:
                pass


async def follow_kv_digests(bus: Bus, subject: str, handler: Handler) -> Subscription:
    """Every pod's last digest under ``subject`` (from JetStream, once), then live ones.

    Live digests ride a core subscription, which nats-py re-subscribes after a reconnect
    whatever happened to the stream (a restarted NATS with memory storage has none until
    a collector recreates it); the stored ones are read once by an ordered consumer that
    is dropped when it has delivered them. A digest seen twice is harmless.
    """
    live = await bus.subscribe(subject, handler)
    nc: Any = getattr(bus, "nc", None)
    if nc is None:
        return live
    from nats.js.api import DeliverPolicy

    js = nc.jetstream(timeout=2.0)
    both = _Both(live, None)

    async def cb(msg: Any) -> None:
        handler(msg.subject, msg.data)
        try:
            done = msg.metadata.num_pending == 0
        except Exception:
            done = False
        if done:
            await both.drop_boot()

    try:
        both.boot = await js.subscribe(
            subject,
            stream=bus.subjects.kv_stream,
            cb=cb,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=0.5,
        )
    except Exception as exc:  # no stream yet (no collector with KV events has started)
        log.info("no stored KV digests; following live ones", extra={"error": repr(exc)})
    return both
