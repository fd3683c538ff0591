"""The adaptive scrape rate of one endpoint: fast while it works, slower while it is idle.

An idle pod's page does not change, yet scraping it 20 times a second was two thirds of
InferGate's fixed CPU cost (bench/results/peers.md). :class:`ScrapeRate` decides, from
each scrape's outcome, which interval the next scrape waits:

* ``scrape_interval`` (fast) by default, after any failed scrape (health verdicts keep
  their latency) and at once after any page that shows activity;
* ``idle_scrape_interval`` once ``IDLE_AFTER`` consecutive pages showed no running and no
  waiting request and the same values (:func:`activity_key`): a request that came and went
  between two scrapes still moves the prefix-cache counters, which counts as activity.

It is pure (no clock, no I/O), so the decision is tested without timing.

Freshness: the pickers count a snapshot older than their ``staleness`` (0.2 s by default)
as stale, and an unchanged snapshot carries the time of the scrape that produced it, so
an idle endpoint must be *republished at every idle scrape*, not every other one.
:func:`idle_heartbeat` gives the heartbeat interval that guarantees this while the
endpoint is on the idle rate; the scraper hands it to the endpoint's state.

:class:`RateMetrics` holds the two metrics of the feature, registered once per collector
registry: the gauge of endpoints on the idle rate (no labels) and the counter of rate
changes (label ``to``: ``idle`` or ``fast``).
"""

from __future__ import annotations

import logging
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge

from collector.parse import PageMetrics

log = logging.getLogger(__name__)

# Consecutive quiet, identical pages before an endpoint moves to the idle rate (0.25 s at 20 Hz).
IDLE_AFTER = 5
# The idle interval when none is set (unless the scrape interval is already that long).
DEFAULT_IDLE_INTERVAL = 0.1
# The idle interval must stay below this (validation): far beyond it an idle pod's metrics
# would be older than any sensible reader staleness. The pickers' default is 0.2 s.
MAX_IDLE_INTERVAL = 1.0


def activity_key(pm: PageMetrics) -> tuple:
    """The page values whose change means the endpoint did something since the last scrape."""
    return (
        pm.running,
        pm.waiting,
        pm.kv_usage,
        pm.kv_capacity_tokens,
        pm.prefix_queries,
        pm.prefix_hits,
        pm.preemptions,
        tuple(pm.lora_running),
        tuple(pm.lora_waiting),
        pm.max_lora,
        pm.model,
        pm.engine,
    )


def effective_idle_interval(scrape_interval: float, idle_scrape_interval: float | None) -> float:
    """The idle interval in force (0 = off). Unset, it is ``DEFAULT_IDLE_INTERVAL``, or off
    when the fast rate is already that slow: a setup with ``--scrape-interval 0.2`` keeps
    working unchanged instead of failing validation over a default it never asked for."""
    if idle_scrape_interval is None:
        return DEFAULT_IDLE_INTERVAL if scrape_interval < DEFAULT_IDLE_INTERVAL else 0.0
    return idle_scrape_interval


def idle_enabled(scrape_interval: float, idle_scrape_interval: float) -> bool:
    """0 or an idle interval equal to (or below) the fast one turns the idle rate off."""
    return idle_scrape_interval > scrape_interval


def idle_heartbeat(heartbeat_interval: float, idle_interval: float, jitter: float) -> float:
    """The heartbeat interval to use while an endpoint is on the idle rate.

    The state republishes an unchanged snapshot when at least the heartbeat interval has
    passed since its last publish, checked at each scrape. With idle scrapes about as far
    apart as the heartbeat, a scrape landing just before it would be held back and the next
    publish would come almost two intervals later (0.2 s: stale for the pickers). Lowering
    the threshold by the shortest time to the next scrape publishes whenever waiting for the
    next scrape could exceed the heartbeat: an unchanged idle endpoint is then republished
    at most ``max(heartbeat, idle interval) + 2 x jitter x idle interval`` apart.
    """
    return max(0.0, heartbeat_interval - idle_interval * (1.0 - jitter))


def validate_idle_interval(scrape_interval: float, idle_scrape_interval: float) -> str | None:
    """The problem with an idle scrape interval, or None when it is acceptable."""
    if idle_scrape_interval == 0 or idle_scrape_interval == scrape_interval:
        return None  # off
    if idle_scrape_interval < 0:
        return f"idle scrape interval must be >= 0 (0 = off), got {idle_scrape_interval:g}"
    if idle_scrape_interval < scrape_interval:
        return (
            f"idle scrape interval ({idle_scrape_interval:g} s) must be 0 (off) or at least the "
            f"scrape interval ({scrape_interval:g} s)"
        )
    if idle_scrape_interval >= MAX_IDLE_INTERVAL:
        return (
            f"idle scrape interval ({idle_scrape_interval:g} s) must be below {MAX_IDLE_INTERVAL:g} s: "
            "an idle endpoint's metrics are as old as its last scrape, and the pickers count "
            "metrics older than their staleness (0.2 s by default) as stale"
        )
    return None


class ScrapeRate:
    """Which interval the next scrape of one endpoint waits (pure: no clock, no I/O)."""

    __slots__ = ("_key", "_quiet", "enabled", "fast", "idle", "idle_after", "idle_interval")

    def __init__(self, fast: float, idle_interval: float, idle_after: int = IDLE_AFTER) -> None:
        self.fast = fast
        self.idle_interval = idle_interval
        self.idle_after = max(1, idle_after)
        self.enabled = idle_enabled(fast, idle_interval)
        self.idle = False  # on the idle rate now
        self._key: tuple | None = None  # values of the last quiet page
        self._quiet = 0  # consecutive quiet pages with those values

    @property
    def interval(self) -> float:
        return self.idle_interval if self.idle else self.fast

    def observe(self, pm: PageMetrics | None) -> bool:
        """Record one scrape (``None``: it failed); True when the rate changed."""
        if not self.enabled:
            return False
        if pm is None or pm.running or pm.waiting:
            self._key, self._quiet = None, 0
        else:
            key = activity_key(pm)
            if key == self._key:
                self._quiet += 1
            else:  # quiet but different: something happened since the last page
                self._key, self._quiet = key, 1
        idle = self._quiet >= self.idle_after
        # Any page that is not the same quiet page again returns to the fast rate at once.
        if idle != self.idle:
            self.idle = idle
            return True
        return False

    def reset(self) -> None:
        self.idle, self._key, self._quiet = False, None, 0


class RateMetrics:
    """The idle-rate metrics of one collector registry."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, RateMetrics] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.idle_endpoints = Gauge(
            "infergate_collector_idle_rate_endpoints",
            "Endpoints scraped at the idle rate now (no activity for a few scrapes).",
            registry=registry,
        )
        self.changes = Counter(
            "infergate_collector_scrape_rate_changes_total",
            "Endpoints moved between the fast and the idle scrape rate, by the rate moved to.",
            ["to"],
            registry=registry,
        )
        self.to_idle = self.changes.labels("idle")
        self.to_fast = self.changes.labels("fast")

    @classmethod
    def of(cls, registry: CollectorRegistry) -> RateMetrics:
        """The registry's instance, created (and registered) on first use."""
        m = cls._by_registry.get(registry)
        if m is None:
            m = cls._by_registry[registry] = cls(registry)
        return m
