"""precise-prefix tokenizes long prompts off the event loop (picker/scheduling/prewarm.py).

Asserted by progress, not time: the tokenizer used here blocks until a coroutine on the
event loop has run. Tokenized on the loop, that coroutine could never run (the gate
times out and records it); tokenized in the worker thread, it runs first.
"""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from picker.director import RequestHeaders
from picker.extproc import Exchange
from picker.scheduling import prewarm
from picker.scheduling.kvtokenizer import SimTokenizer
from picker.scheduling.precise import PrecisePrefixScorer
from shared.tokens import text_for_tokens


class GateTokenizer(SimTokenizer):
    """The simulator's tokenizer, which first waits for the loop to show progress."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.saw_progress: list[bool] = []
        self.calls = 0

    def encode_offsets(self, text: str):
        self.calls += 1
        self.saw_progress.append(self.gate.wait(timeout=5))
        return super().encode_offsets(text)

    def encode(self, text: str):
        return self.encode_offsets(text)[0]


def _scorer(tok: GateTokenizer, cache: bool = True) -> PrecisePrefixScorer:
    s = PrecisePrefixScorer(tokenizer="sim", token_cache_chunks=8192 if cache else 0)
    s.tokenizer = tok
    if s.token_cache is not None:
        s.token_cache.tok = tok
    return s


async def _progress(tok: GateTokenizer, order: list[str]) -> None:
    await asyncio.sleep(0)
    order.append("loop ran")
    tok.gate.set()


def test_a_long_prompt_is_tokenized_while_the_loop_keeps_running():
    text = text_for_tokens(4000, seed=1)
    expected = PrecisePrefixScorer(tokenizer="sim").hashes(text)
    for cache in (True, False):
        tok = GateTokenizer()
        s = _scorer(tok, cache)
        order: list[str] = []

        async def main(s=s, tok=tok, order=order) -> None:
            await asyncio.gather(s.warm(text), _progress(tok, order))
            order.append("warmed")

        asyncio.run(main())
        assert tok.saw_progress == [True] and order == ["loop ran", "warmed"]
        assert s.hashes(text) == expected and tok.calls == 1  # scoring took the ready answer
        assert s.offloaded == 1 and not s.ready


def test_a_short_prompt_stays_inline():
    tok = GateTokenizer()
    tok.gate.set()
    s = _scorer(tok)
    short = "x" * (s.offload_chars - 1)
    asyncio.run(s.warm(short))
    assert tok.calls == 0 and s.offloaded == 0
    assert s.hashes(short) == PrecisePrefixScorer(tokenizer="sim").hashes(short) and tok.calls == 1


def test_the_ext_proc_stream_warms_before_the_director_routes():
    tok = GateTokenizer()
    s = _scorer(tok)
    prewarm.register(s)  # as the picker does for its active profile (kvfeed.attach_precise)
    text = text_for_tokens(2000, seed=2)
    body = json.dumps({"model": "m", "prompt": text}).encode()
    ex = Exchange(SimpleNamespace(max_body_bytes=1 << 24))
    ex.hdr = RequestHeaders(path="/v1/completions")
    half = len(body) // 2
    ex.body_chunks = [body[:half]]
    last = ep.ProcessingRequest(request_body=ep.HttpBody(body=body[half:], end_of_stream=True))
    order: list[str] = []
    asyncio.run(_both(ex.prewarm(last), _progress(tok, order)))
    assert tok.saw_progress == [True] and (False, text) in s.ready
    assert s.hashes(text) == PrecisePrefixScorer(tokenizer="sim").hashes(text) and tok.calls == 1


async def _both(a, b) -> None:
    await asyncio.gather(a, b)
