"""The precise prefix index and the precise-prefix scorer (fed directly, no transport)."""

from __future__ import annotations

import tempfile

import pytest
from sched_helpers import NOW, ctx, req, state

from picker.scheduling.kvindex import PreciseIndex, get_index
from picker.scheduling.kvtokenizer import load_tokenizer
from picker.scheduling.precise import PrecisePrefixScorer
from picker.scheduling.prefix import PrefixIndex
from shared.hashing import prefix_block_hashes
from shared.kvevents import KVDelta, KVDigest
from shared.kvhash import BlockHasher
from shared.tokens import text_for_tokens
from sim.tokenize import encode

A, B = "10.0.0.0:8000", "10.0.0.1:8000"


def test_digest_delta_tiers_and_bounds():
    idx = PreciseIndex(max_blocks=6)
    idx.apply_digest(KVDigest(A, "e", 5, 0.0, [1, 2, 3], [4]), NOW)
    assert idx.match([1, 2, 3, 4, 9], NOW) == {A: 3.5}  # CPU block counts half
    idx.apply_delta(KVDelta(A, "e", 5, 0.0, stored=[99]), NOW)  # already in the digest: ignored
    assert idx.match([99], NOW) == {}
    idx.apply_delta(KVDelta(A, "e", 6, 0.0, stored=[7], removed=[2]), NOW)
    assert idx.match([1, 2, 3], NOW) == {A: 1.0} and idx.match([7], NOW) == {A: 1.0}
    idx.apply_digest(KVDigest(B, "f", 1, 0.0, [1, 2, 10, 11]), NOW)  # 4 + 4 > 6: two dropped
    assert idx.size() == 6 and idx.dropped == 2
    idx.apply_delta(KVDelta(A, "e", 8, 0.0, clear=True), NOW)  # a gap (7 lost) and a clear
    assert idx.pods[A].lost == 1 and idx.match([1], NOW) == {B: 1.0}
    idx.remove(B)
    assert idx.size() == 0  # the clear dropped both of A's tiers


def test_liveness_and_speculation():
    idx = PreciseIndex(stale_after_s=3.0, speculative_ttl_s=2.0)
    idx.apply_digest(KVDigest(A, "e", 0, 0.0, [1]), NOW)
    idx.remember("r1", [1, 2, 3])
    idx.on_assigned("r1", A, NOW)
    assert idx.match([1, 2, 3], NOW + 1) == {A: 3.0}  # speculative until confirmed
    idx.apply_delta(KVDelta(A, "e", 1, 0.0, stored=[2]), NOW + 1)  # 2 confirmed
    assert idx.match([1, 2, 3], NOW + 2.5) == {A: 2.0}  # 3 expired unconfirmed
    assert not idx.is_live(A, NOW + 3.5)  # no digest for longer than stale_after_s
    assert idx.match([1], NOW + 3.5) == {}
    idx.apply_digest(KVDigest(A, "e", 1, 0.0, [1], live=False), NOW + 4)
    assert not idx.is_live(A, NOW + 4)


def test_unconfirmed_speculation_leaves_the_index_on_the_next_digest():
    """A guess no event confirms (a cancelled request) must not stay once nothing more is routed."""
    idx = PreciseIndex(speculative_ttl_s=2.0)
    idx.apply_digest(KVDigest(A, "e", 0, 0.0, [1]), NOW)
    idx.remember("r1", [1, 2, 3])
    idx.on_assigned("r1", A, NOW)
    assert idx.size() == 3
    idx.apply_digest(KVDigest(A, "e", 0, 0.0, [1]), NOW + 1)  # unchanged pod, guess still fresh
    assert idx.size() == 3
    idx.apply_digest(KVDigest(A, "e", 0, 0.0, [1]), NOW + 2.5)  # unchanged pod, guess expired
    assert idx.size() == 1 and idx.match([1, 2, 3], NOW + 2.5) == {A: 1.0}


def _scorer(index: str) -> PrecisePrefixScorer:
    return PrecisePrefixScorer(tokenizer="sim", index=index)


def test_scorer_uses_vllms_hashes_and_falls_back_per_pod():
    sc = _scorer("t-scorer")
    idx = get_index("t-scorer")
    text = text_for_tokens(160, seed=3)  # 10 blocks
    hashes = BlockHasher(16, "0").hashes(encode(text))
    idx.apply_digest(KVDigest(A, "e", 0, 0.0, hashes[:5]), NOW)
    approx = PrefixIndex()
    approx.add(B, prefix_block_hashes("llama", text))  # B has no events: approximate path
    r = req(prompt_text=text, prefix_hashes=prefix_block_hashes("llama", text))
    c = ctx(r, prefix=approx)
    group = [state(0), state(1)]
    assert sc.score(c, group) == [0.5, 1.0]
    assert idx.routed["mixed"] == 1
    known, value = c.get("precise-prefix", group)
    assert known and value == [0.5, 1.0]
    # every pod's events stopped: the decision is approximate
    assert sc.score(ctx(r, prefix=approx), [state(1)]) == [1.0]
    assert idx.routed["approximate"] == 1


def test_precise_profile_routes_a_prefix_to_the_pod_that_holds_it():
    from sched_helpers import sched, view

    s = sched("precise-prefix")
    idx = get_index("default")
    text = text_for_tokens(320, seed=9)
    hashes = BlockHasher(16, "0").hashes(encode(text))
    for i, a in enumerate((A, B, "10.0.0.2:8000")):
        idx.apply_digest(KVDigest(a, "e", 0, 0.0, hashes if i == 2 else []), NOW)
    views = [view(0), view(1), view(2)]
    d = s.schedule(req("x", prompt_text=text, prompt_tokens=320), views, NOW)
    assert d.endpoints[0] == "10.0.0.2:8000"
    s.on_assigned(req("x"), d.endpoints[0], NOW)  # the assignment hook is wired by the service


def test_hf_tokenizer_from_a_local_file():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(tok.to_str())
    t = load_tokenizer(f.name)
    assert t.encode("hello world nope") == [1, 2, 0]
    with pytest.raises(Exception, match=r"(?i)no such file|os error|not found"):
        load_tokenizer("/nonexistent/tokenizer.json")


def test_a_digest_in_step_with_the_deltas_only_refreshes_liveness():
    idx = PreciseIndex()
    idx.apply_digest(KVDigest(A, "e", 1, 0.0, [1]), NOW)
    idx.apply_delta(KVDelta(A, "e", 2, 0.0, stored=[2]), NOW)
    idx.apply_digest(KVDigest(A, "e", 2, 0.0, [1, 2]), NOW + 2.9)  # nothing new: trusted as is
    assert idx.is_live(A, NOW + 5) and idx.match([1, 2], NOW + 5) == {A: 2.0}
    idx.apply_delta(KVDelta(A, "e", 4, 0.0, stored=[3]), NOW + 5)  # 3 was lost
    idx.apply_digest(KVDigest(A, "e", 4, 0.0, [1, 2, 9]), NOW + 5)  # applied whole: 3 was removed
    assert idx.match([1, 2, 9], NOW + 5) == {A: 3.0} and idx.match([1, 2, 3], NOW + 5) == {A: 2.0}
