"""Deterministic chained prefix-block hashes, identical in every process.

A prompt is cut into blocks of ``block_chars`` characters (16 tokens at about four
characters per token). Block *i*'s hash covers block *i* and, through the chain, every
block before it, so two prompts share hash *i* exactly when they share the first *i+1*
blocks. The chain is seeded with the model name because different models never share KV.
Python's ``hash()`` is salted per process, so BLAKE2b is used instead.
"""

from __future__ import annotations

from hashlib import blake2b

BLOCK_TOKENS = 16
BLOCK_CHARS = 64
MAX_BLOCKS = 256


def _h(prev: bytes, chunk: bytes) -> bytes:
    return blake2b(chunk, digest_size=8, key=prev).digest()


def prefix_block_hashes(
    model: str, prompt: str, block_chars: int = BLOCK_CHARS, max_blocks: int = MAX_BLOCKS
) -> list[int]:
    """Hashes of the complete leading blocks of ``prompt`` (a trailing partial block is not cached)."""
    data = prompt.encode("utf-8", "surrogatepass")
    n = min(len(data) // block_chars, max_blocks)
    prev = blake2b(model.encode(), digest_size=8).digest()
    out: list[int] = []
    for i in range(n):
        prev = _h(prev, data[i * block_chars : (i + 1) * block_chars])
        out.append(int.from_bytes(prev, "little") >> 1)  # 63 bits: fits msgpack int64
    return out
