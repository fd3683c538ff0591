"""vLLM's prefix-cache block hashes, computed outside vLLM.

vLLM names every full KV block by a hash chained over token ids
(``vllm/v1/core/kv_cache_utils.py``, ``hash_block_tokens``)::

    h_0 = H((NONE_HASH, tuple(tokens[0:bs]), extra_keys))
    h_i = H((h_{i-1},   tuple(tokens[i*bs:(i+1)*bs]), extra_keys))

where, for ``--prefix-caching-hash-algo sha256_cbor``, ``H(x) = sha256(cbor(x, canonical))``
and ``NONE_HASH = H(PYTHONHASHSEED)`` (the seed *string*; unset means random bytes, and
then nobody outside the process can reproduce the chain). Only full blocks are hashed.
The KV events carry each hash as vLLM's ``ExternalBlockHash``: with
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`` (the default) the digest read big-endian and cut
to its low 64 bits, else the 32 raw bytes. :func:`external` does the former.

The encoding is ``cbor2``'s (C extension, canonical), the library vLLM itself uses: a
hand-written encoder measured twice as slow in Python (~10 against ~4.4 µs per block).
The tests pin digests and rebuild the chain from the documented algorithm on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256 as _sha256
from typing import Any

from cbor2 import dumps as _dumps

__all__ = [
    "ALGORITHMS",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_SEED",
    "MASK64",
    "BlockHasher",
    "block_hash",
    "external",
    "none_hash",
    "sha256_cbor",
]

ALGORITHMS = ("sha256_cbor",)
DEFAULT_BLOCK_SIZE = 16
DEFAULT_SEED = "0"  # run vLLM with PYTHONHASHSEED=0 (any fixed value works; configure the same)
MASK64 = (1 << 64) - 1


def sha256_cbor(obj: Any) -> bytes:
    """vLLM's ``sha256_cbor``: SHA-256 of the canonical CBOR encoding (``cbor2``, as vLLM)."""
    return _sha256(_dumps(obj, canonical=True)).digest()


def none_hash(seed: str = DEFAULT_SEED) -> bytes:
    """The chain's root: ``sha256_cbor(PYTHONHASHSEED)`` (the seed as vLLM reads it, a string)."""
    return sha256_cbor(str(seed))


def block_hash(parent: bytes, tokens: Sequence[int], extra_keys: tuple | None = None) -> bytes:
    """One link of the chain: the block of ``tokens`` after the block hashed ``parent``."""
    return _sha256(_dumps((parent, tuple(tokens), extra_keys), canonical=True)).digest()


def external(digest: bytes) -> int:
    """vLLM's ``ExternalBlockHash`` of a digest (int block hashes: low 64 bits, big-endian)."""
    return int.from_bytes(digest, "big") & MASK64


class BlockHasher:
    """The hash chain of one model's engines: block size, seed and algorithm fixed.

    ``hashes(tokens)`` gives the 64-bit hashes KV events carry, one per full block, at
    most ``max_blocks`` of them (a router only needs the leading ones).
    """

    __slots__ = ("algo", "block_size", "max_blocks", "root", "seed")

    def __init__(
        self,
        block_size: int = DEFAULT_BLOCK_SIZE,
        seed: str = DEFAULT_SEED,
        algo: str = "sha256_cbor",
        max_blocks: int | None = None,
    ) -> None:
        if algo not in ALGORITHMS:
            raise ValueError(f"unsupported prefix-caching hash algorithm {algo!r} (one of {ALGORITHMS})")
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = int(block_size)
        self.seed = str(seed)
        self.algo = algo
        self.max_blocks = max_blocks
        self.root = none_hash(self.seed)

    def digests(self, tokens: Sequence[int], extra_keys: tuple | None = None) -> list[bytes]:
        """The full 32-byte digests of the complete leading blocks."""
        return self.digests_from(tokens, None, 0, extra_keys)

    def digests_from(
        self, tokens: Sequence[int], parent: bytes | None, start_block: int, extra_keys: tuple | None = None
    ) -> list[bytes]:
        """The chain resumed: ``tokens`` begin at block ``start_block``, whose parent is ``parent``.

        ``digests(t)[n:] == digests_from(t[n * block_size:], digests(t)[n - 1], n)`` (the root
        for ``n == 0``): a cached prefix's digests need not be recomputed.
        """
        bs = self.block_size
        n = len(tokens) // bs
        if self.max_blocks is not None:
            n = min(n, self.max_blocks - start_block)
        out: list[bytes] = []
        prev = self.root if parent is None else parent
        for i in range(n):
            prev = block_hash(prev, tokens[i * bs : (i + 1) * bs], extra_keys)
            out.append(prev)
        return out

    def hashes(self, tokens: Sequence[int], extra_keys: tuple | None = None) -> list[int]:
        """The 64-bit external hashes of the complete leading blocks (what events carry)."""
        return [external(d) for d in self.digests(tokens, extra_keys)]
