"""The token-count approximation shared by the simulator, the picker and the benchmarks.

No tokenizer runs here (no model weights can be fetched), so a token is taken to be
four characters of text, rounded up, with a minimum of one for non-empty text. This is
the common rule of thumb for English text with Llama-2's tokenizer.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Approximate the token count of ``text``."""
    if not text:
        return 0
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def text_for_tokens(n: int, seed: int = 0) -> str:
    """Cheap filler text whose :func:`estimate_tokens` is exactly ``n``."""
    if n <= 0:
        return ""
    words = ("the ", "cat ", "sat ", "on ", "a ", "mat ", "and ", "was ", "fed ")
    out: list[str] = []
    size = 0
    i = seed
    target = n * CHARS_PER_TOKEN
    while size < target:
        w = words[i % len(words)]
        out.append(w)
        size += len(w)
        i += 1
    return "".join(out)[:target]
