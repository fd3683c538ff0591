"""The ``precise-prefix`` scorer: prefix-cache affinity from what the pods say they hold.

For each request it tokenizes the prompt (:mod:`.kvtokenizer`; a chat rendered first with
the model's chat template as the model server renders it, :mod:`.kvchat`), hashes the full blocks
with vLLM's chain (:class:`shared.kvhash.BlockHasher`, the pods' block size, hash seed
and algorithm) and looks them up in the precise index (:mod:`.kvindex`, fed from the
collectors' KV events). Score = matched leading blocks / request blocks (a CPU-tier block
counts ``cpu_weight``). It produces ``precise-prefix`` (the per-endpoint matched fraction)
for plugins that want to gate it by load, like ``prefix-affinity`` does.

Pods whose events are not live (no collector digest for ``stale_after_s``, a pod without
events) are scored on the approximate path, the ``prefix-cache`` score from what this
picker sent where; ``PreciseIndex.routed`` counts which path scored each decision
(``infergate_picker_prefix_path_total{path}``: ``precise`` every candidate, ``mixed`` some,
``approximate`` none).

Tokenization stays off the event loop: the ext_proc stream calls :meth:`warm` (through
:mod:`.prewarm`) before the synchronous scheduler runs, which computes a long prompt's
hashes in this scorer's worker thread; the request holds the answer until it is routed
and :meth:`score` finds it in ``ready`` (weak references: no eviction, nothing kept past
the requests; :mod:`.prewarm` says why). Prompts shorter than ``offload_chars`` are
tokenized inline (measured: below that, the thread hop costs the loop more than the
tokenization; see the README).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.kvhash import DEFAULT_SEED, BlockHasher

from .context import Context
from .kvchat import ChatTemplateError, find_chat
from .kvindex import get_index
from .kvtokcache import TokenPrefixCache
from .kvtokenizer import load_tokenizer
from .params import Params
from .plugin import register
from .scorers import Group, Scorer

__all__ = ["PRECISE_SCORES", "PrecisePrefixScorer", "precise_prompt_metrics"]

log = logging.getLogger(__name__)

PRECISE_SCORES = "precise-prefix"
OFFLOAD_CHARS = 256  # measured break-even ~100 chars: see offload_chars in picker/scheduling/README.md


class Warmed:
    """A prompt's hashes computed in the worker thread (packed, 8 bytes each), kept by the
    requests that hold this object: the scorer refers to it weakly."""

    __slots__ = ("__weakref__", "future")

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future

    def hashes(self) -> list[int] | None:
        """The answer, or None while it is computed or when computing it failed."""
        f = self.future
        if not f.done() or f.cancelled() or f.exception() is not None:
            return None
        return f.result().tolist()


@register("precise-prefix")
class PrecisePrefixScorer(Scorer):
    produces = frozenset({PRECISE_SCORES})

    def __init__(
        self,
        tokenizer: str = "sim",
        block_size: int = 16,
        hash_seed: str = DEFAULT_SEED,
        hash_algo: str = "sha256_cbor",
        cpu_weight: float = 0.5,
        max_blocks: int = 2048,
        index: str = "default",
        add_special_tokens: bool = True,
        token_cache_chunks: int = 8192,
        token_cache_chunk_chars: int = 512,
        offload_chars: int = OFFLOAD_CHARS,
        chat_template: str = "",
    ) -> None:
        self.tokenizer = load_tokenizer(tokenizer, add_special_tokens)
        self.hasher = BlockHasher(block_size, hash_seed, hash_algo, max_blocks)
        # A chat is rendered as the model server renders it (kvchat.py) and tokenized without
        # special tokens (the template writes them); without a template it is hashed flattened.
        self.chat = find_chat(tokenizer, chat_template)
        self.chat_tokenizer = self.tokenizer if tokenizer == "sim" else load_tokenizer(tokenizer, False)
        # chats rendered with the template / refused by it (scored flattened; the pod refuses
        # them too) / flattened for want of a template (infergate_picker_precise_chat_total)
        self.chat_rendered = self.chat_failed = self.chat_flattened = 0
        # Repeated prefixes are tokenized and hashed once (kvtokcache.py); 0 chunks: off.
        self.token_cache = self._cache(self.tokenizer, token_cache_chunks, token_cache_chunk_chars)
        self.chat_cache = (
            self._cache(self.chat_tokenizer, token_cache_chunks, token_cache_chunk_chars)
            if self.chat is not None
            else None
        )
        self.cpu_weight = cpu_weight
        self.index = get_index(index)
        # Simulation only (bench/des/kvprecise.py): score the request's prefix_hashes, which
        # there are the engines' own block hashes, instead of tokenizing prompt_text.
        self.request_hashes = False
        # Off-loop tokenization (prewarm.py): one worker thread; the lock keeps the token
        # cache single-writer (the loop never waits on it: it tokenizes uncached instead).
        self.offload_chars = offload_chars
        self.ready: weakref.WeakValueDictionary[tuple[bool, str], Warmed] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.offloaded = 0  # registered with prewarm by the picker (kvfeed.attach_precise)

    @classmethod
    def from_params(cls, p: Params) -> PrecisePrefixScorer:
        out = cls(
            tokenizer=p.string("tokenizer", "sim"),
            block_size=p.integer("block_size", 16, lo=1),
            hash_seed=str(p.raw("hash_seed", DEFAULT_SEED)),
            hash_algo=p.string("hash_algo", "sha256_cbor"),
            cpu_weight=p.number("cpu_weight", 0.5, lo=0.0, hi=1.0),
            max_blocks=p.integer("max_blocks", 2048, lo=1),
            index=p.string("index", "default"),
            add_special_tokens=p.boolean("add_special_tokens", True),
            token_cache_chunks=p.integer("token_cache_chunks", 8192, lo=0),
            token_cache_chunk_chars=p.integer("token_cache_chunk_chars", 512, lo=64),
            offload_chars=p.integer("offload_chars", OFFLOAD_CHARS, lo=0),
            chat_template=str(p.raw("chat_template", "")),
        )
        p.done()
        return out

    def caches(self) -> list[TokenPrefixCache]:
        """The tokenization caches (completions; rendered chats when there is a template)."""
        return [c for c in (self.token_cache, self.chat_cache) if c is not None]

    def _cache(self, tok, chunks: int, chunk_chars: int) -> TokenPrefixCache | None:
        if chunks <= 0:
            return None
        return TokenPrefixCache(
            tok,
            self.hasher,
            chunk_chars=chunk_chars,
            max_chunks=chunks,
            window_chars=chunk_chars // 4,
            margin_chars=chunk_chars // 16,
        )

    async def warm(self, text: str, messages: list[Any] | None = None) -> Warmed | None:
        """Compute a long prompt's hashes in the worker thread, for :meth:`score` to find.

        Returns the answer, which the caller holds until the request is scored (None: the
        prompt is scored inline). Requests with the same prompt share one computation."""
        if self.request_hashes or len(text) < self.offload_chars:
            return None
        key = (messages is not None, text)
        w = self.ready.get(key)
        if w is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="precise-prefix")
            loop = asyncio.get_running_loop()
            w = Warmed(loop.run_in_executor(self._pool, self._locked_hashes, text, messages))
            self.ready[key] = w
            self.offloaded += 1
        # shielded: one waiter cancelled (its client left) does not cancel the others' answer
        await asyncio.shield(w.future)
        return w

    def _locked_hashes(self, text: str, messages: list[Any] | None) -> array:
        with self._lock:
            return array("Q", self._compute(text, messages, cached=True))

    def render(self, text: str, messages: list[Any] | None) -> tuple[str, bool]:
        """The text the model server tokenizes, and whether it is a rendered chat."""
        if messages is None:
            return text, False
        if self.chat is None:
            self.chat_flattened += 1
            return text, False
        try:
            rendered = self.chat.render(messages)
            self.chat_rendered += 1
            return rendered, True
        except ChatTemplateError as exc:
            self.chat_failed += 1
            log.debug("chat template refused the messages (%s): hashing the flattened chat", exc)
            return text, False

    def _compute(self, text: str, messages: list[Any] | None, cached: bool) -> list[int]:
        text, chat = self.render(text, messages)
        if not text:
            return []
        tok, cache = (self.chat_tokenizer, self.chat_cache) if chat else (self.tokenizer, self.token_cache)
        if cached and cache is not None:
            return cache.hashes(text)
        return self.hasher.hashes(tok.encode(text))

    def hashes(self, text: str, messages: list[Any] | None = None) -> list[int]:
        """The prompt's block hashes: ready from :meth:`warm`, else computed here.

        ``text`` is the completion prompt, or for a chat (``messages`` given) the picker's
        flattening, used when there is no chat template."""
        if not text and not messages:
            return []
        w = self.ready.get((messages is not None, text))
        if w is not None and (got := w.hashes()) is not None:
            return got
        if not self._lock.acquire(blocking=False):  # the worker holds the caches: don't wait
            return self._compute(text, messages, cached=False)
        try:
            return self._compute(text, messages, cached=True)
        finally:
            self._lock.release()

    def score(self, ctx: Context, group: Group) -> list[float] | None:
        req = ctx.request
        idx = self.index
        now = ctx.now
        live = [idx.is_live(s.address, now) for s in group]
        out = [0.0] * len(group)
        precise = any(live)
        if precise:
            hashes = req.prefix_hashes if self.request_hashes else self.hashes(req.prompt_text, req.messages)
            idx.remember(req.request_id, hashes)
            if hashes:
                matched = idx.match(hashes, now, self.cpu_weight)
                inv = 1.0 / len(hashes)
                for i, s in enumerate(group):
                    m = matched.get(s.address)
                    if m:
                        out[i] = min(1.0, m * inv)
        if not all(live) and req.prefix_hashes:  # the rest on the approximate path
            inv = 1.0 / len(req.prefix_hashes)
            for i, m in ctx.prefix_hits(group):
                if not live[i]:
                    out[i] = m * inv
        idx.routed["approximate" if not precise else "precise" if all(live) else "mixed"] += 1
        ctx.put(PRECISE_SCORES, group, out)
        return out if any(out) else None


def precise_prompt_metrics(scorers: list[PrecisePrefixScorer]) -> Iterator[Any]:
    """Prometheus families: prompts tokenized off the event loop, chats by how they were rendered."""
    from prometheus_client.core import CounterMetricFamily

    o = CounterMetricFamily(
        "infergate_picker_precise_offloaded",
        "Prompts the precise-prefix scorer tokenized in its worker thread, before scheduling",
    )
    o.add_metric([], sum(s.offloaded for s in scorers))
    yield o
    c = CounterMetricFamily(
        "infergate_picker_precise_chat",
        "Chat prompts hashed by the precise-prefix scorer: rendered with the model's chat template, "
        "refused by it, or flattened (no template)",
        labels=["render"],
    )
    kinds = (("template", "chat_rendered"), ("refused", "chat_failed"), ("flattened", "chat_flattened"))
    for label, attr in kinds:
        c.add_metric([label], sum(getattr(s, attr) for s in scorers))
    yield c
