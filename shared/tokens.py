"""The token-count approximation shared by the simulator, the picker and the benchmarks.

No tokenizer runs here (no model weights can be fetched), so a token is taken to be
four characters of text, rounded up, with a minimum of one for non-empty text. This is
the common rule of thumb for English text with Llama-2's tokenizer.
"""

from __future__ import annotations

import random

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Approximate the token count of ``text``."""
    if not text:
        return 0
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


# 64 short words: a seed's text is a pseudo-random walk over them, so two seeds' texts part
# within the first few words (two 64-character blocks agree with odds of about 64**-12).
_VOCABULARY = (
    "the of and to in is was for on with as at by from it an be this that are or not but all can one "
    "has had her his they we you she them our out day get may new now old see way who boy did its "
    "let put say too use cat sat mat fed run sun red big top hat"
)
_WORDS = tuple(_VOCABULARY.split(" "))


def text_for_tokens(n: int, seed: int = 0) -> str:
    """Filler text whose :func:`estimate_tokens` is exactly ``n``; distinct seeds share no prefix.

    The text is a deterministic function of ``(n, seed)``, and for one seed a shorter text
    is a prefix of a longer one. Different seeds give unrelated word sequences, so prompts
    made with distinct seeds share no prefix-cache block by accident (an earlier version
    cycled nine words from ``seed % 9``: every prompt belonged to one of nine families).
    """
    if n <= 0:
        return ""
    target = n * CHARS_PER_TOKEN
    rng = random.Random(seed)
    words = rng.choices(_WORDS, k=target // 3 + 1)  # every word + space is at least 3 characters
    return " ".join(words)[:target]
