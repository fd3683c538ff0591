"""Where KV digests are kept: a JetStream stream holding the last digest per pod.

The collector calls :func:`ensure_kv_stream` (idempotent, every collector may) and the
picker follows :func:`kv_digest_feed`: the last digest of every pod under a wildcard, then
live ones (the same :class:`~shared.feed.LastValueFeed` as the endpoint snapshots), so a
starting replica converges without history. Digests expire after ``max_age_s``: a dead collector's pods
drop out of the precise index by themselves. Over a bus without JetStream (the in-memory
bus of unit tests and the simulation), digests are followed live only.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.bus import Bus, Handler
from shared.feed import LastValueFeed

__all__ = ["DIGEST_MAX_AGE_S", "ensure_kv_stream", "kv_digest_feed"]

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


def kv_digest_feed(bus: Bus, subject: str, handler: Handler, retry_s: float = 2.0) -> LastValueFeed:
    """Every pod's last digest under ``subject`` (from JetStream, once), then live ones.

    The snapshots' mechanism (:class:`shared.feed.LastValueFeed`) on the digest stream:
    live digests ride a core subscription opened first, which nats-py re-subscribes after
    a reconnect whatever happened to the stream (a restarted NATS with memory storage has
    none until a collector recreates it); the stored ones are read by an ordered consumer
    released once they are in, and read again after every reconnect. Pickers never create
    the stream (collectors do): until one exists the bootstrap is retried every
    ``retry_s`` while live digests flow. A digest seen twice is harmless. Run the feed's
    ``run()`` under a supervisor.
    """
    return LastValueFeed(
        bus, subject, handler, manage_streams=False, retry_s=retry_s, stream=bus.subjects.kv_stream
    )
