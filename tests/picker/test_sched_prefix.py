"""The approximate prefix index and the prefix-cache scorer."""

from __future__ import annotations

from sched_helpers import NOW, ctx, req, sched, view

from picker.scheduling.prefix import PrefixIndex
from picker.scheduling.scorers import PrefixCacheScorer
from shared.hashing import prefix_block_hashes


def test_longest_leading_match_per_endpoint():
    idx = PrefixIndex()
    idx.add("a", [1, 2, 3, 4])
    idx.add("b", [1, 2, 9])
    idx.add("c", [7, 8])
    assert idx.match([1, 2, 3, 5]) == {"a": 3, "b": 2}
    assert idx.match([1, 2, 3, 4, 5, 6]) == {"a": 4, "b": 2}
    assert idx.match([99, 1, 2]) == {}  # a match must start at the first block
    assert idx.match([]) == {}
    assert idx.matched("a", [1, 2, 3, 5]) == 3


def _match_by_walk(idx: PrefixIndex, hashes: list[int]) -> dict[str, int]:
    """The oracle: each endpoint's leading run of held blocks, walked block by block."""
    out = {}
    for addr in idx._lru:
        n = idx.matched(addr, hashes)
        if n:
            out[addr] = n
    return out


def test_match_equals_a_per_endpoint_walk_under_adds_and_evictions():
    """The fast match relies on nested holder sets; random chains, capacities and removals keep them so."""
    import random

    rng = random.Random(5)
    idx = PrefixIndex(default_capacity_blocks=24)
    roots = [[rng.getrandbits(62) for _ in range(12)] for _ in range(6)]

    def chain() -> list[int]:  # a shared root, cut anywhere, then a private tail (chained, like vLLM's)
        root = rng.choice(roots)[: rng.randint(1, 12)]
        return root + [rng.getrandbits(62) for _ in range(rng.randint(0, 4))]

    addrs = [f"p{i}" for i in range(12)]
    for step in range(3000):
        a = rng.choice(addrs)
        if step % 97 == 0:
            idx.remove(a)
        elif step % 89 == 0:
            idx.set_capacity(a, rng.randint(4, 30))
        else:
            idx.add(a, chain())
        q = chain()
        got = idx.match(q)
        assert got == _match_by_walk(idx, q)
        assert list(got.values()) == sorted(got.values(), reverse=True)  # longest first


def test_lru_evicts_deepest_blocks_first_and_respects_capacity():
    idx = PrefixIndex(default_capacity_blocks=4)
    idx.add("a", [1, 2, 3])
    idx.add("a", [1, 5, 6])  # 5 entries > 4: the oldest (block 3, the deepest of the first prompt) goes
    assert idx.size("a") == 4
    assert idx.match([1, 2, 3]) == {"a": 2}
    assert idx.match([1, 5, 6]) == {"a": 3}
    idx.set_capacity("a", 2)
    assert idx.size("a") == 2
    assert idx.match([1, 5, 6]) == {"a": 2}


def test_remove_endpoint_clears_its_blocks():
    idx = PrefixIndex()
    idx.add("a", [1, 2])
    idx.add("b", [1])
    idx.remove("a")
    assert idx.match([1, 2]) == {"b": 1}
    idx.remove("b")
    assert idx.match([1]) == {}


def test_capacity_comes_from_the_snapshot():
    s = sched("gie-v1")
    v = view(0, kv_capacity_tokens=64 * 16, block_size=16)
    s.on_snapshot(v.snapshot, NOW)
    assert s.prefix.capacity(v.address) == 64
    v2 = view(1, kv_capacity_tokens=0)
    s.on_snapshot(v2.snapshot, NOW)
    assert s.prefix.capacity(v2.address) > 0  # unknown capacity: a sane default


def test_prefix_score_is_matched_over_total_blocks():
    idx = PrefixIndex()
    hashes = prefix_block_hashes("llama", "x" * 64 * 8)
    idx.add("10.0.0.0:8000", hashes[:4])
    idx.add("10.0.0.1:8000", hashes)
    from sched_helpers import state

    group = [state(0), state(1), state(2)]
    scores = PrefixCacheScorer().score(ctx(req(prefix_hashes=hashes), prefix=idx), group)
    assert scores == [0.5, 1.0, 0.0]


def test_prefix_score_uniform_without_hashes_or_hits():
    from sched_helpers import state

    group = [state(0), state(1)]
    assert PrefixCacheScorer().score(ctx(req()), group) is None
    assert PrefixCacheScorer().score(ctx(req(prefix_hashes=[1, 2])), group) is None


def test_on_assigned_indexes_local_and_peer_assignments():
    s = sched("gie-v1")
    vs = [view(0), view(1), view(2)]
    for v in vs:
        s.on_snapshot(v.snapshot, NOW)
    hashes = prefix_block_hashes("llama", "system prompt " * 200)
    s.on_assigned(req("r1", prefix_hashes=hashes), vs[0].address, NOW)
    s.on_assigned(req("r2", prefix_hashes=hashes[:3]), vs[1].address, NOW, replica="peer-1")
    assert s.prefix.match(hashes) == {vs[0].address: len(hashes), vs[1].address: 3}
    d = s.schedule(req("r3", prefix_hashes=hashes), vs, NOW)
    assert d.endpoints[0] == vs[0].address
