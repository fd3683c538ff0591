"""The precise prefix index: which pod holds which vLLM KV block, as the pods' events say.

Fed from the collectors' NATS subjects (:mod:`shared.kvevents`): a digest replaces a
pod's blocks, a delta changes them. Block hash -> {pod: tiers} (GPU, CPU, and
*speculative*: blocks this picker (or a peer) just routed to a pod, written at routing
time so the next request of the same prefix follows before the pod's event confirms it;
they expire after ``speculative_ttl_s`` unless an event stores them).

A pod is *live* while its digests keep coming (every second from its collector): after
``stale_after_s`` without one, or a digest saying ``live: false``, its entries no longer
count and the scorer routes it on the approximate path. The index is bounded
(``max_blocks`` entries over all pods; past it, new blocks of a pod are not indexed and
``dropped`` counts them) and ``size()`` is exported as a gauge.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.kvevents import KVDelta, KVDigest

__all__ = ["CPU", "GPU", "SPEC", "PodKV", "PreciseIndex", "get_index"]

GPU, CPU, SPEC = 1, 2, 4


@dataclass
class PodKV:
    epoch: str = ""
    seq: int = 0
    last_digest: float = float("-inf")  # the index clock (the picker's ``now``)
    live: bool = False
    block_size: int = 16
    gpu: set[int] = field(default_factory=set)
    cpu: set[int] = field(default_factory=set)
    spec: OrderedDict[int, float] = field(default_factory=OrderedDict)  # hash -> expiry
    lost: int = 0  # deltas missed (a gap in seq): fixed by the next digest


class PreciseIndex:
    def __init__(
        self,
        *,
        max_blocks: int = 4_000_000,
        stale_after_s: float = 3.0,
        speculative_ttl_s: float = 2.0,
    ) -> None:
        self.max_blocks = max_blocks
        self.stale_after_s = stale_after_s
        self.speculative_ttl_s = speculative_ttl_s
        self.pods: dict[str, PodKV] = {}
        self._holders: dict[int, dict[str, int]] = {}
        self._size = 0
        self.dropped = 0
        self.routed = {"precise": 0, "mixed": 0, "approximate": 0}  # which path routed (metric)
        self._pending: OrderedDict[str, list[int]] = OrderedDict()  # request id -> hashes

    # -- bookkeeping ---------------------------------------------------------------------------
    def size(self) -> int:
        return self._size

    def _set(self, address: str, h: int, bit: int) -> bool:
        holders = self._holders.get(h)
        if holders is None:
            if self._size >= self.max_blocks:
                self.dropped += 1
                return False
            self._holders[h] = holders = {}
        cur = holders.get(address, 0)
        if cur == 0:
            if self._size >= self.max_blocks:
                self.dropped += 1
                if not holders:
                    del self._holders[h]
                return False
            self._size += 1
        holders[address] = cur | bit
        return True

    def _unset(self, address: str, h: int, bit: int) -> None:
        holders = self._holders.get(h)
        if holders is None:
            return
        cur = holders.get(address, 0)
        if not cur & bit:
            return
        cur &= ~bit
        if cur:
            holders[address] = cur
        else:
            del holders[address]
            self._size -= 1
            if not holders:
                del self._holders[h]

    def _drop_pod_entries(self, address: str, pod: PodKV) -> None:
        for s, bit in ((pod.gpu, GPU), (pod.cpu, CPU)):
            for h in s:
                self._unset(address, h, bit)
            s.clear()
        for h in pod.spec:
            self._unset(address, h, SPEC)
        pod.spec.clear()

    # -- feeding -------------------------------------------------------------------------------
    def apply_digest(self, d: KVDigest, now: float) -> None:
        """Make the pod's blocks the digest's: only the difference touches the index (a pod
        under load sends a digest every second; most of its blocks did not change)."""
        pod = self.pods.get(d.address)
        if pod is None:
            pod = self.pods[d.address] = PodKV()
        elif pod.live and d.live and pod.epoch == d.epoch and pod.seq == d.seq and not pod.lost:
            pod.last_digest = now  # every delta it sums up was applied: only liveness is news
            self._expire_spec(d.address, pod, now)
            return
        pod.epoch, pod.seq, pod.live, pod.last_digest = d.epoch, d.seq, d.live, now
        pod.block_size = d.block_size or pod.block_size
        pod.lost = 0
        if not d.live:
            self._drop_pod_entries(d.address, pod)
            return
        for listed, cur, bit in ((d.gpu, pod.gpu, GPU), (d.cpu, pod.cpu, CPU)):
            new = set(listed)
            gone = cur - new
            for h in gone:
                self._unset(d.address, h, bit)
            cur -= gone
            for h in new - cur:
                if self._set(d.address, h, bit):
                    cur.add(h)
        for h in [h for h in pod.spec if h in pod.gpu]:  # confirmed by the digest
            del pod.spec[h]
            self._unset(d.address, h, SPEC)
        self._expire_spec(d.address, pod, now)

    def apply_delta(self, d: KVDelta, now: float) -> None:
        pod = self.pods.get(d.address)
        if pod is None:
            pod = self.pods[d.address] = PodKV(epoch=d.epoch)
        if d.epoch != pod.epoch:
            pod.epoch, pod.seq = d.epoch, d.seq - 1  # a new collector: its digest follows
        if d.seq <= pod.seq:
            return  # already in the digest
        if d.seq != pod.seq + 1:
            pod.lost += 1
        pod.seq = d.seq
        if d.clear:
            for h in pod.gpu:
                self._unset(d.address, h, GPU)
            for h in pod.cpu:
                self._unset(d.address, h, CPU)
            pod.gpu.clear()
            pod.cpu.clear()
        for hs, s, bit in ((d.removed, pod.gpu, GPU), (d.removed_cpu, pod.cpu, CPU)):
            for h in hs:
                if h in s:
                    s.discard(h)
                    self._unset(d.address, h, bit)
        for hs, s, bit in ((d.stored, pod.gpu, GPU), (d.stored_cpu, pod.cpu, CPU)):
            for h in hs:
                if h not in s and self._set(d.address, h, bit):
                    s.add(h)
                if bit == GPU and pod.spec.pop(h, None) is not None:
                    self._unset(d.address, h, SPEC)  # confirmed
        if d.block_size:
            pod.block_size = d.block_size

    def remove(self, address: str) -> None:
        pod = self.pods.pop(address, None)
        if pod is not None:
            self._drop_pod_entries(address, pod)

    # -- speculation ---------------------------------------------------------------------------
    def remember(self, request_id: str, hashes: list[int]) -> None:
        """The scorer computed ``hashes`` for this request: kept until it is assigned (bounded)."""
        self._pending[request_id] = hashes
        while len(self._pending) > 4096:
            self._pending.popitem(last=False)

    def on_assigned(self, request_id: str, address: str, now: float) -> None:
        hashes = self._pending.pop(request_id, None)
        if hashes:
            self.speculate(address, hashes, now)

    def speculate(self, address: str, hashes: Sequence[int], now: float) -> None:
        pod = self.pods.get(address)
        if pod is None or not self.is_live(address, now):
            return
        exp = now + self.speculative_ttl_s
        for h in hashes:
            if h in pod.gpu:
                continue
            if h in pod.spec:
                pod.spec[h] = exp
                pod.spec.move_to_end(h)
            elif self._set(address, h, SPEC):
                pod.spec[h] = exp
        self._expire_spec(address, pod, now)

    def _expire_spec(self, address: str, pod: PodKV, now: float) -> None:
        """Drop the pod's expired speculative entries, oldest first.

        Run on every speculation and every digest (each live pod sends one a second), so a
        guess no event confirmed (a cancelled request, a prompt the pod evicted at once)
        leaves the index even when nothing more is routed to that pod.
        """
        while pod.spec:
            h, e = next(iter(pod.spec.items()))
            if e > now:
                break
            pod.spec.popitem(last=False)
            self._unset(address, h, SPEC)

    # -- reading -------------------------------------------------------------------------------
    def is_live(self, address: str, now: float) -> bool:
        pod = self.pods.get(address)
        return pod is not None and pod.live and now - pod.last_digest <= self.stale_after_s

    def match(self, hashes: Sequence[int], now: float, cpu_weight: float = 0.5) -> dict[str, float]:
        """Live pod -> matched leading blocks (GPU or speculative count 1, CPU ``cpu_weight``)."""
        if not hashes:
            return {}
        first = self._holders.get(hashes[0])
        if not first:
            return {}
        out: dict[str, float] = {}
        for address in first:
            if not self.is_live(address, now):
                continue
            pod = self.pods[address]
            score = 0.0
            for h in hashes:
                bits = self._holders.get(h, {}).get(address, 0)
                if bits & GPU or (bits & SPEC and pod.spec.get(h, 0.0) > now):
                    score += 1.0
                elif bits & CPU:
                    score += cpu_weight
                else:
                    break
            if score:
                out[address] = score
        return out


_INDEXES: dict[str, PreciseIndex] = {}


def get_index(name: str = "default") -> PreciseIndex:
    """The process's index of that name: the picker service feeds it, the scorer reads it."""
    idx = _INDEXES.get(name)
    if idx is None:
        idx = _INDEXES[name] = PreciseIndex()
    return idx
