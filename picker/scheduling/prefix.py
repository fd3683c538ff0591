"""An approximate prefix-cache index: which endpoint probably holds which prompt blocks.

vLLM caches prompt KV in blocks whose identity is a chained hash of the block and
everything before it, so "pod P holds block *i*" implies it held blocks *0..i-1* when it
computed it. We do not see the pods' caches; we remember what we sent where. Each
endpoint gets an LRU of block hashes sized like its KV cache (``kv_capacity_tokens //
block_size`` blocks), and a global inverted index (hash -> endpoints) lets a lookup
touch only the endpoints that hold the request's first block, not every endpoint.

Bounded: prompts come from clients, so each LRU is capped by its capacity, a capacity a
pod reports is clamped to ``max_capacity_blocks``, and at most ``max_addresses``
endpoints are indexed (blocks for one more are not indexed, counted in ``refused``).
The index thus holds at most ``max_addresses x max_capacity_blocks`` hashes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["DEFAULT_CAPACITY_BLOCKS", "PrefixIndex"]

DEFAULT_CAPACITY_BLOCKS = 8192  # ~ a 7B model on one 80 GB GPU (7,463 blocks of 16 tokens)
MAX_CAPACITY_BLOCKS = 1 << 20  # 16M tokens of 16: far above any single GPU's KV cache


class PrefixIndex:
    """Per-endpoint LRUs of block hashes with a shared inverted index."""

    def __init__(
        self,
        default_capacity_blocks: int = DEFAULT_CAPACITY_BLOCKS,
        *,
        max_capacity_blocks: int = MAX_CAPACITY_BLOCKS,
        max_addresses: int = 10_000,
    ) -> None:
        self.max_capacity_blocks = max(1, int(max_capacity_blocks))
        self.default_capacity_blocks = min(max(1, int(default_capacity_blocks)), self.max_capacity_blocks)
        self.max_addresses = max(1, max_addresses)
        self.refused = 0
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._cap: dict[str, int] = {}
        self._holders: dict[int, set[str]] = {}

    def capacity(self, address: str) -> int:
        return self._cap.get(address, self.default_capacity_blocks)

    def set_capacity(self, address: str, blocks: int) -> None:
        """Size ``address``'s LRU (``blocks`` <= 0 means unknown: use the default)."""
        blocks = min(int(blocks), self.max_capacity_blocks) if blocks > 0 else self.default_capacity_blocks
        if address not in self._cap and len(self._cap) >= self.max_addresses:
            self.refused += 1
            return
        if self._cap.get(address) == blocks:
            return
        self._cap[address] = blocks
        lru = self._lru.get(address)
        if lru is not None:
            self._evict(address, lru, blocks)

    def add(self, address: str, hashes: Sequence[int]) -> None:
        """``address`` will cache these blocks: make them its most recent entries.

        Blocks are touched last-to-first so the first block, shared by the most prompts,
        is the most recent and the last one evicted.
        """
        if not hashes:
            return
        lru = self._lru.get(address)
        if lru is None:
            if len(self._lru) >= self.max_addresses:
                self.refused += 1
                return
            lru = self._lru[address] = OrderedDict()
        holders = self._holders
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                s = holders.get(h)
                if s is None:
                    holders[h] = {address}
                else:
                    s.add(address)
        self._evict(address, lru, self._cap.get(address, self.default_capacity_blocks))

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Endpoint -> number of leading blocks of ``hashes`` it holds (only endpoints with >= 1).

        Ordered longest match first. The holders of a chain's blocks are *nested*: a
        block's hash covers its whole prefix, :meth:`add` touches a chain tail-first (so
        every predecessor is more recent than its successor in each LRU) and eviction
        takes the least recent, so a pod holding block *i* holds blocks *0..i-1*. Along
        the chain the holder set can only shrink, and where its size does not change it
        is the same set: only the positions where it shrinks cost a set operation (in C),
        and the result is built with ``dict.fromkeys``. A popular prompt held by most of
        a 1,000-pod pool costs one pass over its holders instead of one per block
        (the test checks this against a per-block walk, the oracle).
        """
        if not hashes:
            return {}
        holders = self._holders
        alive = holders.get(hashes[0])
        if not alive:
            return {}
        levels: list[tuple[int, set[str]]] = []  # (blocks held, the endpoints holding exactly that many)
        size = len(alive)
        for i in range(1, len(hashes)):
            s = holders.get(hashes[i])
            if not s:
                levels.append((i, alive))
                break
            if len(s) != size:
                nxt = alive & s
                levels.append((i, alive - nxt))
                if not nxt:
                    break
                alive, size = nxt, len(nxt)
        else:
            levels.append((len(hashes), alive))
        if len(levels) == 1:
            return dict.fromkeys(levels[0][1], levels[0][0])
        out: dict[str, int] = {}
        for n, held in reversed(levels):
            out.update(dict.fromkeys(held, n))
        return out

    def matched(self, address: str, hashes: Sequence[int]) -> int:
        """Leading blocks of ``hashes`` held by one endpoint."""
        lru = self._lru.get(address)
        if not lru:
            return 0
        n = 0
        for h in hashes:
            if h not in lru:
                break
            n += 1
        return n

    def remove(self, address: str) -> None:
        lru = self._lru.pop(address, None)
        self._cap.pop(address, None)
        if lru:
            holders = self._holders
            for h in lru:
                s = holders.get(h)
                if s is not None:
                    s.discard(address)
                    if not s:
                        del holders[h]

    @property
    def hashes(self) -> int:
        """Distinct block hashes indexed (the inverted index's size)."""
        return len(self._holders)

    @property
    def blocks(self) -> int:
        """Block entries over every endpoint's LRU."""
        return sum(len(lru) for lru in self._lru.values())

    @property
    def addresses(self) -> int:
        return len(self._lru.keys() | self._cap.keys())

    def size(self, address: str) -> int:
        lru = self._lru.get(address)
        return len(lru) if lru else 0

    def _evict(self, address: str, lru: OrderedDict[int, None], cap: int) -> None:
        holders = self._holders
        while len(lru) > cap:
            h, _ = lru.popitem(last=False)
            s = holders.get(h)
            if s is not None:
                s.discard(address)
                if not s:
                    del holders[h]
