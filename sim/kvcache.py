"""The KV cache of one engine: ``block_size``-token blocks, with vLLM's prefix caching.

Blocks are counted, not materialized. With prefix caching, a prompt's complete blocks
are registered under their chained hashes (given by the caller) with reference counts;
free blocks, cached or not, wait in one LRU queue and are evicted from its head when new
blocks are needed (an anonymous run of ``n`` uncached free blocks is one queue entry).
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import count
from typing import Protocol

from sim.request import SimRequest


class KVSink(Protocol):
    def stored(self, req: SimRequest, start: int, end: int) -> None:
        """``req``'s blocks ``[start, end)`` were just cached (hashes in ``req.block_hashes``)."""

    def removed(self, block_hash: int) -> None:
        """A cached block was evicted."""


class KVCache:
    """Free-block accounting and the prefix cache. Never reads a clock."""

    def __init__(self, total_blocks: int, block_size: int, prefix_caching: bool) -> None:
        self.total_blocks = total_blocks
        self.bs = block_size
        self.prefix_caching = prefix_caching
        self.num_free = total_blocks
        self.cached: dict[int, int] = {}  # block hash -> ref count (0 = free but still cached)
        self.fq: OrderedDict[int, int] = OrderedDict()  # free queue: hash -> 1 or -id -> run length
        self._anon = count(1)
        # KV events (sim.kvevents.EventRecorder): told of every block cached and evicted,
        # as vLLM's BlockPool tells its KVEventsPublisher. None: no events, no cost.
        self.sink: KVSink | None = None
        if prefix_caching:
            self.fq[-next(self._anon)] = total_blocks

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.total_blocks

    def cached_prefix_tokens(self, block_hashes: list[int]) -> int:
        """Leading tokens of a prompt with these block hashes that are cached now."""
        cached = self.cached
        n = 0
        for h in block_hashes:
            if h not in cached:
                break
            n += 1
        return n * self.bs

    def alloc(self, n: int) -> None:
        """Take ``n`` free blocks, evicting cached ones from the head of the LRU queue."""
        self.num_free -= n
        if not self.prefix_caching:
            return
        fq = self.fq
        cached = self.cached
        sink = self.sink
        while n > 0:
            key, cnt = fq.popitem(last=False)
            if key >= 0:  # a cached block: evict its hash
                del cached[key]
                n -= 1
                if sink is not None:
                    sink.removed(key)
            elif cnt > n:
                fq[key] = cnt - n
                fq.move_to_end(key, last=False)
                n = 0
            else:
                n -= cnt

    def free(self, req: SimRequest) -> None:
        """Release a request's blocks; its cached blocks stay cached until evicted."""
        held = req.held_blocks
        req.held_blocks = 0
        if not self.prefix_caching:
            self.num_free += held
            return
        hashes = req.held_hashes
        fq = self.fq
        anon = held - len(hashes)
        freed = anon
        if anon > 0:
            fq[-next(self._anon)] = anon
        cached = self.cached
        for h in reversed(hashes):
            r = cached[h] - 1
            cached[h] = r
            if r == 0:  # shared blocks stay in use until their last holder leaves
                fq[h] = 1
                freed += 1
        self.num_free += freed
        req.held_hashes = []

    def register(self, req: SimRequest) -> None:
        """Cache the prompt's newly completed full blocks under their hashes."""
        hashes = req.block_hashes
        if not hashes:
            return
        full = min(req.computed // self.bs, len(hashes), req.prompt_tokens // self.bs)
        held = req.held_hashes
        i = len(held)  # blocks [0, len(held)) are hashed (a prefix of the prompt)
        if i >= full:
            return
        cached = self.cached
        start = i
        while i < full:
            h = hashes[i]
            if h in cached:
                break  # a duplicate computed concurrently elsewhere: the rest stays anonymous
            cached[h] = 1
            held.append(h)
            i += 1
        if self.sink is not None and i > start:
            self.sink.stored(req, start, i)

    def lookup(self, block_hashes: list[int], limit: int) -> tuple[int, int]:
        """``(hit_blocks, evictable)``: leading cached blocks (at most ``limit``), and how
        many of them sit in the free queue (taking them uses up free blocks)."""
        cached = self.cached
        hit = evictable = 0
        for h in block_hashes:
            if hit >= limit:
                break
            r = cached.get(h)
            if r is None:
                break
            if r == 0:
                evictable += 1
            hit += 1
        return hit, evictable

    def acquire(self, req: SimRequest, hit_blocks: int) -> None:
        """Give ``req`` a reference to its first ``hit_blocks`` cached blocks."""
        cached = self.cached
        fq = self.fq
        held = req.held_hashes
        for h in req.block_hashes[:hit_blocks]:
            r = cached[h]
            if r == 0:
                del fq[h]
                self.num_free -= 1
            cached[h] = r + 1
            held.append(h)

    def check(self, refs: dict[int, int]) -> None:
        """Assert the queue and reference counts agree with ``refs`` (tests only)."""
        if self.prefix_caching:
            assert sum(self.fq.values()) == self.num_free
            for h, r in self.cached.items():
                assert refs.get(h, 0) == r, (h, r, refs.get(h))
                assert (r == 0) == (h in self.fq)
