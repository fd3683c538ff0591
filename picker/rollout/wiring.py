"""Wire the rollout controller into a running picker (off until a rule is marked for rollout).

The controller follows the pool's event subjects on the view's NATS connection and opens
the rollout KV bucket lazily, the first time the configuration marks a rule, so a picker
without rollouts needs no permission on that bucket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from picker.rollout.controller import RolloutController
from shared.kvstore import open_bucket

if TYPE_CHECKING:
    from picker.service import Picker

log = logging.getLogger(__name__)


async def run(picker: Picker, controller: RolloutController) -> None:
    feed = picker.feed
    assert feed is not None
    await feed.connected_event.wait()
    bus = feed.bus
    cfg = picker.config
    sub = await bus.subscribe(
        bus.subjects.events_of_pool(cfg.pool_namespace, cfg.pool_name), controller.on_events
    )
    loop = asyncio.create_task(controller.run(), name="rollout-loop")
    try:
        backoff = 0.2
        while controller.kv is None:
            if not controller.rollouts:
                await asyncio.sleep(0.5)
                continue
            try:
                controller.kv = await open_bucket(
                    bus.nc, bus.subjects.rollout_bucket, replicas=cfg.nats.stream_replicas
                )
                log.info("rollout state bucket open", extra={"bucket": bus.subjects.rollout_bucket})
            except Exception as exc:
                log.warning(
                    "rollout bucket unavailable; retrying", extra={"error": repr(exc), "backoff_s": backoff}
                )
                await asyncio.sleep(backoff)
                backoff = min(10.0, backoff * 2)
        await loop
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await sub.unsubscribe()
