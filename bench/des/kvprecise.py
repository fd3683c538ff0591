"""The precise prefix path inside the DES: engines' KV events -> collector -> bus -> pickers.

Every engine gets the simulator's event recorder (:class:`sim.kvevents.EventRecorder`, the
same sink the simulated pods publish from); at each scrape of a pod, the DES does what the
collector does with what the pod published since: fold it (:class:`collector.kvevents.PodKVState`),
publish one :class:`~shared.kvevents.KVDelta` on the pod's KV subject, and a digest every
``digest_interval_s``. Each picker replica follows those subjects on the in-memory bus with
its own :class:`~picker.scheduling.kvindex.PreciseIndex` (:class:`picker.kvfeed.KVFeed`),
so the scorer, the index, the speculative entries and the fallback are the real code.

Two simplifications, both stated in the results: deltas leave at the scrape interval
(50 ms) rather than the collector's 20 ms, and the scorer is handed the engine's block
hashes (the workload's) instead of tokenizing a prompt text the DES does not have: that
vLLM's chain and the picker's agree is what the compatibility tests prove, not what this
experiment measures.
"""

from __future__ import annotations

from typing import Any

from collector.kvevents import PodKVState
from picker.kvfeed import KVFeed, attach_precise, precise_scorers
from picker.scheduling.kvindex import PreciseIndex
from shared import kvevents as kv
from sim.kvevents import EventRecorder

__all__ = ["KVEventsModel"]

DIGEST_INTERVAL_S = 1.0


class KVEventsModel:
    def __init__(self, cluster: Any, namespace: str, pool: str) -> None:
        self.cluster = cluster
        self.bus = cluster.bus
        self.namespace, self.pool = namespace, pool
        subjects = cluster.subjects
        bs = cluster.cfg.engine.block_size
        self.recorders = {}
        self.states = {}
        self.seq = dict.fromkeys(cluster.addresses, 0)
        self.next_digest = dict.fromkeys(cluster.addresses, 0.0)
        self.delta_subject = {}
        self.digest_subject = {}
        for a, eng in cluster.engines.items():
            rec = EventRecorder(bs)
            eng.kv.sink = rec
            self.recorders[a] = rec
            self.states[a] = PodKVState()
            pod = f"pod-{a}"
            self.delta_subject[a] = subjects.kv_delta(namespace, pool, pod, 8000)
            self.digest_subject[a] = subjects.kv_digest(namespace, pool, pod, 8000)
        self.indexes: list[PreciseIndex] = []
        for pk in cluster.pickers:
            idx = PreciseIndex()
            if not attach_precise(pk.profile, idx):
                continue
            for scorer in precise_scorers(pk.profile):
                scorer.request_hashes = True  # the DES has the engine's hashes, not a prompt text
            feed = KVFeed(self.bus, namespace, pool, idx, clock=lambda: cluster.now)
            self.bus.subscribe_nowait(subjects.kv_deltas_of_pool(namespace, pool), feed.on_delta)
            self.bus.subscribe_nowait(subjects.kv_digests_of_pool(namespace, pool), feed.on_digest)
            self.indexes.append(idx)

    def on_scrape(self, address: str, now: float) -> None:
        st = self.states[address]
        events = self.recorders[address].take()
        if events:
            st.apply(kv.EventBatch(now, events, 0))
        if st.has_delta():
            self.seq[address] += 1
            d = st.take_delta(address, "des", self.seq[address])
            self.bus.publish_nowait(self.delta_subject[address], kv.encode_delta(d))
        if now >= self.next_digest[address]:
            self.next_digest[address] = now + DIGEST_INTERVAL_S
            g = kv.KVDigest(address, "des", self.seq[address], now, list(st.gpu), list(st.cpu), st.block_size)
            self.bus.publish_nowait(self.digest_subject[address], kv.encode_digest(g))

    def routed(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for idx in self.indexes:
            for k, v in idx.routed.items():
                out[k] = out.get(k, 0) + v
        return out
