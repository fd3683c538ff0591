"""A bounded cache of tokenized text prefixes: a long shared context is tokenized and hashed once.

Tokenizing a 32k-token prompt with a Hugging Face tokenizer costs ~90 ms of CPU, and the
precise path needs it for every request; but the requests that precise routing helps are
the ones that repeat a long prefix (a system prompt, a customer's context). So the text is
cut into fixed ``chunk_chars`` chunks; chunk ``k`` is named by a digest chained over the
text up to its end (so it names the whole prefix ``text[:k*C]``), and remembers the tokens
of that prefix that *start* inside it, their character offsets, and the block digests of
vLLM's chain whose last token it holds.

For a new text the longest run of cached chunks ``1..k`` gives the tokens up to near
``k*C``. The tokens close to the cut may depend on what follows it, so the text is
re-tokenized from a cached token start ``window_chars`` before the cut, and the two
tokenizations are *spliced* at the first token boundary where they agree: a token that
starts at the same offset, after whitespace (a word boundary for every pre-tokenizing
tokenizer: byte-level BPE, Metaspace/SentencePiece, WordPiece), and from which the
re-tokenization matches every cached token up to ``margin_chars`` before the cut. No such
point (a word longer than the window across the cut) means a full tokenization.

**Where it can differ from tokenizing the whole text**: only for a tokenizer whose tokens
before a word boundary depend on text more than ``window_chars`` after it. Every
tokenizer with a pre-tokenizer that splits at whitespace is exact (a token never spans a
word boundary); the tests compare with the uncached tokenizer (the oracle) on filler,
chat transcripts with special tokens, non-ASCII text and whitespace-free runs, and
``audit_every`` re-tokenizes one cached answer in that many fully and counts any
difference (``mismatches``; the full answer is the one used).

Bounded at ``max_chunks`` chunks (least recently used evicted): ~1.8 KB a 512-character
chunk (tokens and offsets at 4 bytes each, block digests; tracemalloc), ~15 MB at 8,192.
"""

from __future__ import annotations

import bisect
import logging
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from hashlib import blake2b

from shared.kvhash import BlockHasher, external

__all__ = ["TokenPrefixCache"]

log = logging.getLogger(__name__)


class _Chunk:
    __slots__ = ("digests", "ids", "n_before", "starts")

    def __init__(self, ids: array, starts: array, n_before: int, digests: list[bytes]) -> None:
        self.ids = ids  # body tokens (no special tokens) starting inside this chunk
        self.starts = starts  # their character offsets in the text
        self.n_before = n_before  # body tokens in the chunks before this one
        self.digests = digests  # block digests whose last token is one of these


class TokenPrefixCache:
    """Tokenize + hash with reuse of cached prefixes; ``hashes(text)`` as ``hasher.hashes(tok.encode(text))``.

    ``tokenizer`` must offer ``encode_offsets(text) -> (ids, starts)`` without special
    tokens and ``specials -> (prefix ids, suffix ids)`` (see :mod:`.kvtokenizer`).
    """

    def __init__(
        self,
        tokenizer,
        hasher: BlockHasher,
        chunk_chars: int = 512,
        max_chunks: int = 8192,
        window_chars: int = 128,
        margin_chars: int = 32,
        audit_every: int = 100,
    ) -> None:
        if not 0 < margin_chars < window_chars < chunk_chars:
            raise ValueError("need 0 < margin_chars < window_chars < chunk_chars")
        self.tok = tokenizer
        self.hasher = hasher
        self.C = chunk_chars
        self.max_chunks = max_chunks
        self.window = window_chars
        self.margin = margin_chars
        self.audit_every = audit_every
        self.prefix_ids, self.suffix_ids = tokenizer.specials
        self._chunks: OrderedDict[bytes, _Chunk] = OrderedDict()
        # counters (exported with the picker's bounded tables and the kv-index collector)
        self.hits = self.misses = self.resync_failed = self.evicted = self.mismatches = 0
        self._since_audit = 0

    def __len__(self) -> int:
        return len(self._chunks)

    # -- the public answers -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with special tokens, as ``tokenizer.encode(text)`` gives them."""
        run, j, tail, _digests = self._answer(text)
        return [*self.prefix_ids, *_body(run, 0, j), *tail, *self.suffix_ids]

    def hashes(self, text: str) -> list[int]:
        """The 64-bit block hashes (what KV events carry) of ``text``'s full leading blocks."""
        return [external(d) for d in self._answer(text)[3]] if text else []

    # -- tokenization with reuse --------------------------------------------------------------
    def _keys(self, text: str) -> list[bytes]:
        """One digest per full chunk, each chained over the text before it (it names the prefix)."""
        out, h, C = [], b"", self.C
        for k in range(len(text) // C):
            chunk = text[k * C : (k + 1) * C].encode("utf-8", "surrogatepass")
            h = blake2b(h + chunk, digest_size=16).digest()
            out.append(h)
        return out

    def _answer(self, text: str) -> tuple[list[_Chunk], int, list[int], list[bytes]]:
        """``(reused chunks, j, tail, digests)``: body tokens ``0..j`` are the chunks', then ``tail``."""
        keys = self._keys(text)
        run: list[_Chunk] = []
        for key in keys:
            c = self._chunks.get(key)
            if c is None:
                break
            self._chunks.move_to_end(key)
            run.append(c)
        k = len(run)
        spliced = self._splice(text, run) if run else None
        j, tail, starts = 0, [], []
        if spliced is not None:
            j, tail, starts = spliced
            self._since_audit += 1
            if self.audit_every and self._since_audit >= self.audit_every:
                self._since_audit = 0
                ids, _ = self.tok.encode_offsets(text)
                if list(ids) != _body(run, 0, j) + tail:
                    self.mismatches += 1
                    log.warning("tokenization cache: a spliced answer differed from the full tokenization")
                    for key in keys[:k]:
                        del self._chunks[key]
                    spliced = None
        if spliced is None:
            self.misses += 1
            ids, offs = self.tok.encode_offsets(text)
            run, j, tail, starts, k = [], 0, list(ids), list(offs), 0
        else:
            self.hits += 1
        # the hash chain: blocks wholly inside the reused tokens come from the chunks
        p, bs = len(self.prefix_ids), self.hasher.block_size
        reused = [d for c in run for d in c.digests]
        nb = min(len(reused), (p + j) // bs)
        first = nb * bs
        ids = [*self.prefix_ids[first:], *_body(run, max(0, first - p), j), *tail, *self.suffix_ids]
        digests = reused[:nb] + self.hasher.digests_from(ids, reused[nb - 1] if nb else None, nb)
        self._insert(keys, k, j, tail, starts, digests)
        return run, j, tail, digests

    def _splice(self, text: str, run: list[_Chunk]) -> tuple[int, list[int], list[int]] | None:
        """Re-tokenize from ``window`` before the run's end and splice: ``(j, tail, starts)`` or None."""
        cut = len(run) * self.C
        last = run[-1]
        i0 = bisect.bisect_left(last.starts, cut - self.window)
        if i0 >= len(last.ids) or last.n_before + i0 == 0:
            self.resync_failed += 1
            return None
        region_ids, region_starts = last.ids[i0:], last.starts[i0:]
        x0 = region_starts[0]
        ids, offs = self.tok.encode_offsets(text[x0:])
        first_at: dict[int, int] = {}
        for i, s in enumerate(region_starts):
            first_at.setdefault(s, i)
        limit = cut - self.margin
        n = len(region_ids)
        for r in range(1, len(ids)):
            s = offs[r] + x0
            if s >= limit:
                break
            i = first_at.get(s)
            if i is None or offs[r - 1] == offs[r] or not text[s].isspace():
                continue
            # the re-tokenization agrees with every cached token from here to the margin
            q = 0
            while i + q < n and region_starts[i + q] < limit:
                if (
                    r + q >= len(ids)
                    or ids[r + q] != region_ids[i + q]
                    or offs[r + q] + x0 != region_starts[i + q]
                ):
                    break
                q += 1
            else:
                return last.n_before + i0 + i, list(ids[r:]), [t + x0 for t in offs[r:]]
        self.resync_failed += 1
        return None

    def _insert(
        self,
        keys: list[bytes],
        k: int,
        j: int,
        tail: Sequence[int],
        starts: Sequence[int],
        digests: list[bytes],
    ) -> None:
        """Remember the full chunks ``k..`` of the text from its tokens (``tail``: body from ``j``)."""
        p, bs, C = len(self.prefix_ids), self.hasher.block_size, self.C
        chunks = self._chunks
        for ci in range(k, len(keys)):
            if keys[ci] in chunks:
                continue
            a = bisect.bisect_left(starts, ci * C)
            b = bisect.bisect_left(starts, (ci + 1) * C)
            n_before = j + a
            # the blocks whose last token is one of this chunk's: full index in [p + n_before, p + j + b)
            lo, hi = (p + n_before) // bs, (p + j + b) // bs
            chunks[keys[ci]] = _Chunk(
                array("i", tail[a:b]), array("i", starts[a:b]), n_before, digests[lo:hi]
            )
        while len(chunks) > self.max_chunks:
            chunks.popitem(last=False)
            self.evicted += 1


def _body(run: list[_Chunk], a: int, b: int) -> list[int]:
    """Body tokens ``a..b`` from a run of chunks (``b`` inside the run)."""
    out: list[int] = []
    for c in run:
        lo, hi = c.n_before, c.n_before + len(c.ids)
        if hi <= a:
            continue
        if lo >= b:
            break
        out.extend(c.ids[max(0, a - lo) : min(len(c.ids), b - lo)])
    return out
