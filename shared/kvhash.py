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

The CBOR encoding is written out here (one array of a byte string, an array of
unsigned ints and ``null``, in the shortest canonical form) rather than delegated to a
general encoder: it is the hot path of every precise routing decision, and it lets the
tests check us against ``cbor2`` itself instead of against our own code.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

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

_U8 = struct.Struct(">B").pack
_U16 = struct.Struct(">H").pack
_U32 = struct.Struct(">I").pack
_U64 = struct.Struct(">Q").pack


def _head(major: int, n: int) -> bytes:
    """A canonical CBOR head: major type and argument in the shortest form."""
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 0x100:
        return bytes((m | 24,)) + _U8(n)
    if n < 0x10000:
        return bytes((m | 25,)) + _U16(n)
    if n < 0x100000000:
        return bytes((m | 26,)) + _U32(n)
    if n <= MASK64:
        return bytes((m | 27,)) + _U64(n)
    raise ValueError(f"{n} does not fit a CBOR unsigned integer")


# Token ids repeat across prompts and vocabularies are small (< 300k): cache their encoding.
_UINT_CACHE: dict[int, bytes] = {}


def _uint(n: int) -> bytes:
    b = _UINT_CACHE.get(n)
    if b is None:
        b = _head(1, -1 - n) if n < 0 else _head(0, n)  # (negative: never a token id, still right)
        if len(_UINT_CACHE) < 1 << 20:
            _UINT_CACHE[n] = b
    return b


def _cbor(obj: Any) -> bytes:
    """Canonical CBOR of the few types a block key holds (bytes, str, int, None, bool, tuples)."""
    if obj is None:
        return b"\xf6"
    if obj is True:
        return b"\xf5"
    if obj is False:
        return b"\xf4"
    if isinstance(obj, int):
        return _uint(obj)
    if isinstance(obj, bytes):
        return _head(2, len(obj)) + obj
    if isinstance(obj, str):
        raw = obj.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(obj, (tuple, list)):
        return _head(4, len(obj)) + b"".join(_cbor(x) for x in obj)
    raise TypeError(f"cannot CBOR-encode a block key part of type {type(obj).__name__}")


def sha256_cbor(obj: Any) -> bytes:
    """vLLM's ``sha256_cbor``: SHA-256 of the canonical CBOR encoding."""
    return hashlib.sha256(_cbor(obj)).digest()


def none_hash(seed: str = DEFAULT_SEED) -> bytes:
    """The chain's root: ``sha256_cbor(PYTHONHASHSEED)`` (the seed as vLLM reads it, a string)."""
    return sha256_cbor(str(seed))


def block_hash(parent: bytes, tokens: Sequence[int], extra_keys: tuple | None = None) -> bytes:
    """One link of the chain: the block of ``tokens`` after the block hashed ``parent``."""
    sha = hashlib.sha256
    head = b"\x83" + _head(2, len(parent)) + parent + _head(4, len(tokens))
    tail = b"\xf6" if extra_keys is None else _cbor(extra_keys)
    return sha(head + b"".join(map(_uint, tokens)) + tail).digest()


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
        bs = self.block_size
        n = len(tokens) // bs
        if self.max_blocks is not None:
            n = min(n, self.max_blocks)
        out: list[bytes] = []
        prev = self.root
        for i in range(n):
            prev = block_hash(prev, tokens[i * bs : (i + 1) * bs], extra_keys)
            out.append(prev)
        return out

    def hashes(self, tokens: Sequence[int], extra_keys: tuple | None = None) -> list[int]:
        """The 64-bit external hashes of the complete leading blocks (what events carry)."""
        return [external(d) for d in self.digests(tokens, extra_keys)]
