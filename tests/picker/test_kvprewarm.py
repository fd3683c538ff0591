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

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from picker.director import Queued, Rejected, RequestHeaders
from picker.extproc import Exchange, ExtProcServicer
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

        async def main(s=s, tok=tok, order=order):
            held, _ = await asyncio.gather(s.warm(text), _progress(tok, order))
            order.append("warmed")
            return held

        held = asyncio.run(main())
        assert tok.saw_progress == [True] and order == ["loop ran", "warmed"]
        assert s.hashes(text) == expected and tok.calls == 1  # scoring took the ready answer
        assert s.offloaded == 1 and len(s.ready) == 1
        del held  # the request is gone: so is its answer
        assert not s.ready


def test_a_short_prompt_stays_inline():
    tok = GateTokenizer()
    tok.gate.set()
    s = _scorer(tok)
    short = "x" * (s.offload_chars - 1)
    assert asyncio.run(s.warm(short)) is None
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
    held = asyncio.run(_both(ex.prewarm(last), _progress(tok, order)))
    # (other tests' scorers may still be registered: they warm it too)
    assert tok.saw_progress == [True] and any(h is s.ready.get((False, text)) for h in held)
    assert s.hashes(text) == PrecisePrefixScorer(tokenizer="sim").hashes(text) and tok.calls == 1


def test_an_answer_waits_for_its_request_however_many_queue_behind_it():
    """Requests held in flow control while 100 others are warmed keep their answers: none
    is tokenized again on the loop when it is finally scored (the last 64 were kept before)."""
    tok = GateTokenizer()
    tok.gate.set()
    s = _scorer(tok)
    texts = [text_for_tokens(100, seed=10 + i) for i in range(100)]

    async def main():
        return [await s.warm(t) for t in texts]

    held = asyncio.run(main())
    assert tok.calls == 100
    oracle = PrecisePrefixScorer(tokenizer="sim")
    for t in texts:  # the oldest first, as flow control releases them
        assert s.hashes(t) == oracle.hashes(t)
    assert tok.calls == 100  # every answer was there: nothing tokenized at scoring
    assert len(s.ready) == 100
    del held[:50]  # those requests ended: their answers went with them, the others stay
    assert len(s.ready) == 50 and (False, texts[50]) in s.ready
    held.clear()
    assert not s.ready


def test_requests_with_one_prompt_share_its_answer_and_a_cancelled_one_does_not_spoil_it():
    tok = GateTokenizer()
    s = _scorer(tok)
    text = text_for_tokens(500, seed=3)

    async def main():
        a = asyncio.create_task(s.warm(text))
        b = asyncio.create_task(s.warm(text))
        await asyncio.sleep(0)  # both waiting on the one computation
        a.cancel()  # its client went away
        tok.gate.set()
        got = await b
        return a, got

    a, got = asyncio.run(main())
    assert a.cancelled() and got is not None and tok.calls == 1 and s.offloaded == 1
    assert s.hashes(text) == PrecisePrefixScorer(tokenizer="sim").hashes(text) and tok.calls == 1


class QueueingDirector:
    """Every request waits in flow control while 100 other prompts are warmed, then is
    scored (as the flow controller's dispatch scores it) and answered."""

    max_body_bytes = 1 << 24
    destination_header_list = conformance_hooks = False

    def __init__(self, scorer: PrecisePrefixScorer, tok: GateTokenizer) -> None:
        self.scorer, self.tok = scorer, tok
        self.text = ""
        self.hashes: list[int] = []
        self.calls_at_scoring = -1

    def check_header_count(self, hdr, more):
        return None

    def route(self, hdr, body, subset):
        self.text = json.loads(body)["prompt"]
        return Queued(SimpleNamespace(), None, body)

    async def wait_queued(self, q):
        for i in range(100):  # others warmed meanwhile, each held by its own request
            await self.scorer.warm(text_for_tokens(100, seed=1000 + i))
        calls = self.tok.calls
        self.hashes = self.scorer.hashes(self.text)
        self.calls_at_scoring = self.tok.calls - calls
        return Rejected(503, b"{}", "test: answered after scoring")


@pytest.mark.parametrize("ending", ["body", "trailers"])
def test_the_ext_proc_stream_holds_the_answer_through_a_flow_control_wait(ending):
    """Whether the body ends with end_of_stream or (duplex mode) with request trailers."""
    tok = GateTokenizer()
    tok.gate.set()
    s = _scorer(tok)
    prewarm.register(s)
    text = text_for_tokens(2000, seed=4)
    director = QueueingDirector(s, tok)

    async def messages():
        path = base_pb2.HeaderValue(key=":path", raw_value=b"/v1/completions")
        headers = base_pb2.HeaderMap(headers=[path])
        yield ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=headers, end_of_stream=False))
        body = json.dumps({"model": "m", "prompt": text}).encode()
        if ending == "body":
            yield ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True))
        else:
            yield ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=False))
            yield ep.ProcessingRequest(request_trailers=ep.HttpTrailers())

    async def main():
        return [r async for r in ExtProcServicer(director).Process(messages(), None)]

    out = asyncio.run(main())
    answers = [r for r in out if r.WhichOneof("response") == "immediate_response"]
    assert [a.immediate_response.status.code for a in answers] == [503]
    assert director.calls_at_scoring == 0  # found the answer warmed before the wait
    assert director.hashes == PrecisePrefixScorer(tokenizer="sim").hashes(text)
    assert not s.ready  # the stream ended: nothing kept


async def _both(a, b):
    return (await asyncio.gather(a, b))[0]
