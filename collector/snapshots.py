"""From scrape outcomes to snapshots: the health verdict and publish decision of one endpoint.

:class:`EndpointState` is synchronous and does no I/O: the scraper hands it each
outcome (a parsed page, or a failure) with no ``await`` in between, so cancelling a
scrape task can never leave half an update. It decides

* the health verdict: ``unhealthy_after`` consecutive failures publish ``healthy=False``
  (keeping the last known values, with the failed scrape's ``ts``); before that, the last
  good snapshot stays with its original, ageing ``ts``; one success makes it healthy again;
* whether to publish: at once when a field a scheduler uses changed (:func:`change_key`),
  else as a heartbeat every ``heartbeat_interval``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from collector.parse import PageMetrics
from collector.targets import Key, Target
from shared.schemas import EndpointSnapshot, LoraState

log = logging.getLogger(__name__)

# (endpoint key, snapshot, reason or None): None records the snapshot without publishing it
Offer = Callable[[Key, EndpointSnapshot, "str | None"], None]


def change_key(s: EndpointSnapshot) -> tuple:
    """The fields a scheduler acts on; a change in any of them is published at once."""
    lora = s.lora
    return (
        s.healthy,
        s.ready,
        s.address,
        s.model,
        s.engine,
        s.waiting,
        s.running,
        s.kv_usage,
        s.kv_capacity_tokens,
        s.block_size,
        tuple(lora.running),
        tuple(lora.waiting),
        lora.max_lora,
        tuple(s.served_models),
        s.accelerator,
        s.cost_per_hour,
    )


def snapshot_of(
    target: Target, node: str, pm: PageMetrics, served_models: list[str], ts: float
) -> EndpointSnapshot:
    """A healthy endpoint's snapshot from one parsed page."""
    return EndpointSnapshot(
        namespace=target.namespace,
        pool=target.pool,
        pod=target.pod,
        address=target.address,
        node=node,
        model=pm.model,
        engine=pm.engine,
        waiting=pm.waiting,
        running=pm.running,
        kv_usage=pm.kv_usage,
        kv_capacity_tokens=pm.kv_capacity_tokens,
        block_size=pm.block_size,
        prefix_queries=pm.prefix_queries,
        prefix_hits=pm.prefix_hits,
        preemptions=pm.preemptions,
        lora=LoraState(running=pm.lora_running, waiting=pm.lora_waiting, max_lora=pm.max_lora),
        served_models=served_models,
        accelerator=target.accelerator,
        cost_per_hour=target.cost_per_hour,
        ts=ts,
    )


class EndpointState:
    """Health and last snapshot of one endpoint; turns scrape outcomes into offers."""

    def __init__(
        self,
        target: Target,
        node: str,
        *,
        unhealthy_after: int,
        heartbeat_interval: float,
        offer: Offer,
        on_health_change: Callable[[], None],
    ) -> None:
        self.target = target
        self.node = node
        self.unhealthy_after = unhealthy_after
        self.heartbeat_interval = heartbeat_interval
        self._offer_to = offer
        self._on_health_change = on_health_change
        self.snapshot: EndpointSnapshot | None = None
        self.healthy: bool | None = None  # None until the first verdict
        self.failures = 0
        self._published_key: tuple | None = None
        self._last_offer = -1e18

    def success(self, pm: PageMetrics, served_models: list[str], ts: float) -> None:
        """A usable page was scraped at wall time ``ts``."""
        snap = snapshot_of(self.target, self.node, pm, served_models, ts)
        if self.healthy is False:
            log.info(
                "endpoint healthy again",
                extra={"endpoint": self.target.describe(), "after_failures": self.failures},
            )
        was = self.healthy
        self.failures = 0
        self.healthy = True
        if was is not True:
            self._on_health_change()
        self._offer(snap)

    def failure(self, kind: str, msg: str, ts: float) -> None:
        """A scrape failed (``kind``: timeout, connect, http, parse) at wall time ``ts``."""
        t = self.target
        self.failures += 1
        error = f"{kind}: {msg}"
        if self.failures >= self.unhealthy_after:
            if self.healthy is not False:
                log.warning(
                    "endpoint unhealthy",
                    extra={"endpoint": t.describe(), "failures": self.failures, "error": msg},
                )
                self.healthy = False
                self._on_health_change()
            base = self.snapshot or EndpointSnapshot(
                namespace=t.namespace,
                pool=t.pool,
                pod=t.pod,
                address=t.address,
                node=self.node,
                accelerator=t.accelerator,
                cost_per_hour=t.cost_per_hour,
            )
            # the last known values, with the verdict: current even though the metrics are not
            snap = msgspec.structs.replace(
                base, healthy=False, scrape_error=error, consecutive_failures=self.failures, ts=ts
            )
            self._offer(snap)
        elif self.snapshot is not None:
            # Not yet unhealthy: keep the last good values and their (ageing) timestamp;
            # a heartbeat still goes out on time so readers see the age grow.
            self.snapshot.consecutive_failures = self.failures
            self.snapshot.scrape_error = error
            self._offer(self.snapshot)

    def _offer(self, snap: EndpointSnapshot) -> None:
        key = change_key(snap)
        now = time.monotonic()
        if key != self._published_key:
            reason: str | None = "change"
        elif now - self._last_offer >= self.heartbeat_interval:
            reason = "heartbeat"
        else:
            reason = None
        self.snapshot = snap
        if reason is not None:
            self._published_key = key
            self._last_offer = now
        self._offer_to(self.target.key, snap, reason)
