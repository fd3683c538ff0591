"""Feeding the precise prefix index from the collectors' KV subjects on NATS.

``attach_precise(profile, index)`` points the profile's ``precise-prefix`` scorers at this
picker's own :class:`~picker.scheduling.kvindex.PreciseIndex` and hooks its speculative
writes onto the pool state's assignments (local and peers'). :class:`KVFeed` follows the
pool's digests (the last one per pod from JetStream first, :mod:`shared.kvstream`, so a
starting replica converges at once) and deltas (live, core NATS), and applies them with
the picker's clock. nats-py re-subscribes both after a reconnection, and the digest feed
reads the stored ones again; during an outage
digests stop, the pods turn non-live after ``stale_after_s`` and the scorer routes them on
the approximate path until digests flow again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from picker.scheduling import prewarm
from picker.scheduling.kvindex import PreciseIndex
from picker.scheduling.precise import PrecisePrefixScorer, precise_prompt_metrics
from picker.scheduling.profile import Profile
from shared import kvevents as kv
from shared.bus import Bus, Subscription
from shared.feed import LastValueFeed
from shared.kvstream import kv_digest_feed
from shared.tables import TableCollector

__all__ = [
    "KVFeed",
    "KVIndexCollector",
    "attach_precise",
    "kv_tables",
    "precise_scorers",
    "register_kv_metrics",
]

log = logging.getLogger(__name__)


def precise_scorers(profile: Profile) -> list[PrecisePrefixScorer]:
    selector = getattr(profile.scheduler, "selector", None)
    scorers = getattr(selector, "scorers", None) or []
    return [s for s, _w in scorers if isinstance(s, PrecisePrefixScorer)]


def attach_precise(profile: Profile, index: PreciseIndex) -> bool:
    """Give the profile's precise scorers ``index`` and let them tokenize before scheduling,
    off the event loop (picker/scheduling/prewarm.py); False when the profile has none."""
    found = precise_scorers(profile)
    for s in found:
        s.index = index
        prewarm.register(s)
    if found:
        profile.state.assign_hooks.append(index.on_assigned)
    return bool(found)


def kv_tables(profile: Profile, index: PreciseIndex) -> dict[str, tuple[Callable, int, Callable]]:
    """The precise path's bounded tables, for the picker's ``TableCollector`` (shared/tables.py)."""
    out: dict[str, tuple[Callable, int, Callable]] = {
        "kv_index_blocks": (index.size, index.max_blocks, lambda: index.dropped)
    }
    caches = [c for s in precise_scorers(profile) for c in s.caches()]
    for i, c in enumerate(caches):
        name = "tokenize_cache_chunks" + (f"_{i}" if i else "")
        out[name] = (c.__len__, c.max_chunks, lambda c=c: c.evicted)
    return out


def register_kv_metrics(registry: Any, profile: Profile, index: PreciseIndex) -> None:
    """The precise path's metrics: index and tokenization cache, and their bounds
    (``infergate_picker_kv_table_entries{table}``, ``..._table_limit``, ``..._table_evicted_total``)."""
    registry.register(KVIndexCollector(index, profile))
    registry.register(TableCollector("infergate_picker_kv", kv_tables(profile, index)))


class KVFeed:
    def __init__(
        self,
        bus: Bus,
        namespace: str,
        pool: str,
        index: PreciseIndex,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.namespace = namespace
        self.pool = pool
        self.index = index
        self.clock = clock
        self.deltas = self.digests = self.bad = 0
        self._subs: list[Subscription] = []
        self.feed: LastValueFeed | None = None

    def on_delta(self, subject: str, data: bytes) -> None:
        try:
            d = kv.decode_delta(data)
        except kv.KVEventError:
            self.bad += 1
            return
        self.deltas += 1
        self.index.apply_delta(d, self.clock())

    def on_digest(self, subject: str, data: bytes) -> None:
        try:
            d = kv.decode_digest(data)
        except kv.KVEventError:
            self.bad += 1
            return
        self.digests += 1
        self.index.apply_digest(d, self.clock())

    async def start(self) -> None:
        """Subscribe to the deltas and open the digest feed's live subscription; then ``run()``."""
        s = self.bus.subjects
        self._subs.append(
            await self.bus.subscribe(s.kv_deltas_of_pool(self.namespace, self.pool), self.on_delta)
        )
        self.feed = kv_digest_feed(self.bus, s.kv_digests_of_pool(self.namespace, self.pool), self.on_digest)
        log.info("following KV events", extra={"pool": f"{self.namespace}/{self.pool}"})

    async def run(self) -> None:
        """The digests: the stored last ones, then live, re-read after every reconnect (until cancelled)."""
        assert self.feed is not None, "start() first"
        await self.feed.run()

    async def close(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._subs.clear()


class KVIndexCollector:
    """Prometheus: the index's size (bounded), which path scored each decision, the tokenization cache."""

    def __init__(self, index: PreciseIndex, profile: Profile | None = None) -> None:
        self.index = index
        self.scorers = precise_scorers(profile) if profile else []
        self.caches = [c for s in self.scorers for c in s.caches()]

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        g = GaugeMetricFamily("infergate_picker_kv_index_blocks", "Entries in the precise prefix index")
        g.add_metric([], self.index.size())
        yield g
        c = CounterMetricFamily(
            "infergate_picker_prefix_path",
            "Decisions of the precise-prefix scorer by the path that scored them",
            labels=["path"],
        )
        for path, n in self.index.routed.items():
            c.add_metric([path], n)
        yield c
        d = CounterMetricFamily("infergate_picker_kv_index_dropped", "Blocks not indexed (index full)")
        d.add_metric([], self.index.dropped)
        yield d
        if self.caches:
            t = CounterMetricFamily(
                "infergate_picker_tokenize_cache",
                "Prompts tokenized for the precise path: reusing a cached prefix (hit), in full (miss), "
                "or spliced but differing from a full tokenization in an audit (mismatch)",
                labels=["result"],
            )
            for label, attr in (("hit", "hits"), ("miss", "misses"), ("mismatch", "mismatches")):
                t.add_metric([label], sum(getattr(c, attr) for c in self.caches))
            yield t
        if self.scorers:
            yield from precise_prompt_metrics(self.scorers)
