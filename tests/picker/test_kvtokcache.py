"""The tokenization prefix cache, against the uncached tokenizer as the oracle.

Two Hugging Face tokenizers trained here (none is downloaded): a byte-level BPE (GPT-2,
Llama-3 style) and a Metaspace BPE with a BOS template (SentencePiece/Llama-2 style:
the first word gets a ``▁`` the others get from their space, and a special token is
prepended), plus the simulator's. Every answer must equal ``tokenize whole, then hash``.
"""

from __future__ import annotations

import random
import tempfile

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from picker.scheduling.kvtokcache import TokenPrefixCache
from picker.scheduling.kvtokenizer import HFTokenizer, SimTokenizer
from shared.kvhash import BlockHasher
from shared.tokens import text_for_tokens

SPECIAL = "<|im_start|>"


def _train(kind: str) -> str:
    alphabet = pre_tokenizers.ByteLevel.alphabet() if kind == "bytelevel" else []
    tok = Tokenizer(models.BPE() if kind == "bytelevel" else models.BPE(unk_token="<unk>"))
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = [SPECIAL]
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        specials = ["<unk>", "<s>", SPECIAL]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    corpus = [text_for_tokens(400, seed=s) + " café naïve 12345 ÿ€" for s in range(12)]
    tok.train_from_iterator(corpus, trainer)
    if kind == "metaspace":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    with tempfile.NamedTemporaryFile("w", suffix="-tokenizer.json", delete=False) as f:
        f.write(tok.to_str())
    return f.name


@pytest.fixture(scope="module", params=["bytelevel", "metaspace", "sim"])
def tokenizer(request):
    return SimTokenizer() if request.param == "sim" else HFTokenizer(_train(request.param))


def _prompts(rng: random.Random, n: int) -> list[str]:
    """Long shared contexts + varied questions: cuts mid-word, non-ASCII, special tokens, no-space runs."""
    contexts = [text_for_tokens(1000, seed=s) for s in range(3)]
    contexts.append(("x" * 700 + " ") * 3 + "Ünïcödé " + text_for_tokens(400, seed=9))
    out = []
    for i in range(n):
        c = contexts[rng.randrange(len(contexts))]
        q = text_for_tokens(rng.randrange(5, 300), seed=rng.randrange(1 << 20))
        sep = ("\n", f"\n{SPECIAL}user\n", " é", "")[i % 4]
        text = c + sep + q
        if i % 5 == 0:
            text = text[: rng.randrange(1, len(text))]  # cut anywhere, also inside a context
        out.append(text)
    return out


def test_cached_answers_equal_the_uncached_tokenizer(tokenizer):
    hasher = BlockHasher(16, "0")
    cache = TokenPrefixCache(
        tokenizer, hasher, chunk_chars=512, window_chars=128, margin_chars=32, audit_every=0
    )
    for i, text in enumerate(_prompts(random.Random(4), 40)):
        want = tokenizer.encode(text)
        if i % 2:
            assert cache.encode(text) == want, i
        assert cache.hashes(text) == hasher.hashes(want), i
    # the shared contexts were reused, and each whole-text tokenization stayed the oracle's
    assert cache.hits > cache.misses and cache.mismatches == 0


def test_bounded_lru_and_audit():
    tok = SimTokenizer()
    cache = TokenPrefixCache(
        tok, BlockHasher(16, "0"), chunk_chars=256, window_chars=64, margin_chars=8, max_chunks=10
    )
    for s in range(6):
        cache.hashes(text_for_tokens(400, seed=s))  # 6 chunks each
    assert len(cache) == 10 and cache.evicted == 26
    # an audit that finds a spliced answer differing drops the chunks and answers in full
    cache = TokenPrefixCache(
        tok, BlockHasher(16, "0"), chunk_chars=256, window_chars=64, margin_chars=8, audit_every=1
    )
    ctx = text_for_tokens(400, seed=1)
    cache.hashes(ctx + " a")
    for c in cache._chunks.values():
        c.ids[0] += 1  # corrupt what the cache holds
    hasher = BlockHasher(16, "0")
    assert cache.hashes(ctx + " b") == hasher.hashes(tok.encode(ctx + " b"))
    assert cache.mismatches == 1 and cache.hits == 0
    with pytest.raises(ValueError):
        TokenPrefixCache(tok, hasher, chunk_chars=256, window_chars=256)
