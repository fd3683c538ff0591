"""The load generator against a tiny local OpenAI-like server (loopback only)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from bench.loadgen import LoadItem, jsonl_items, run_load, sharegpt_like_items, trace_items
from shared.tokens import estimate_tokens


class TinyServer:
    """Answers /v1/completions after a short delay; every 4th request gets a 429."""

    def __init__(self, delay_s: float = 0.01, reject_every: int = 0) -> None:
        self.delay_s = delay_s
        self.reject_every = reject_every
        self.bodies: list[dict] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        n = len(self.bodies)
        if self.reject_every and n % self.reject_every == 0:
            return web.json_response({"error": {"message": "busy"}}, status=429)
        out = int(body["max_tokens"])
        usage = {"prompt_tokens": estimate_tokens(body["prompt"]), "completion_tokens": out}
        if not body.get("stream"):
            await asyncio.sleep(self.delay_s)
            return web.json_response({"choices": [{"text": "x" * out}], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(out):
            await asyncio.sleep(self.delay_s / 4)
            await resp.write(b'data: {"choices": [{"text": "x"}]}\n\n')
        await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def __aenter__(self) -> TinyServer:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_poisson_run_records_every_request_and_summarizes():
    async with TinyServer(delay_s=0.02) as srv:
        res = await run_load(srv.url, sharegpt_like_items(seed=1), qps=100, duration_s=0.5, max_requests=500)
    s = res.summary()
    assert s["sent"] == len(res.records) == len(srv.bodies) > 10
    assert s["ok"] == s["sent"] and s["errors"] == {}
    # Requests overlap, so the server may receive them in another order than they were sent.
    assert sorted(r.output_tokens for r in res.records) == sorted(b["max_tokens"] for b in srv.bodies)
    assert all(r.latency_s >= 0.02 for r in res.records)
    assert s["ntpot_p90_s"] > 0 and s["latency_p90_s"] >= s["latency_p50_s"]
    # non-streaming: the first token comes with the whole response, after the server's delay
    assert all(0.02 <= r.ttft_s <= r.latency_s for r in res.records)
    # the ShareGPT-like prompts have the sampled token length
    assert all(1 <= estimate_tokens(b["prompt"]) <= 1024 for b in srv.bodies)


async def test_streaming_ttft_is_the_first_chunk_and_usage_counts_tokens():
    items = iter([LoadItem("hello " * 20, 40)] * 3)
    async with TinyServer(delay_s=0.01) as srv:
        res = await run_load(srv.url, items, qps=50, duration_s=1.0, stream=True)
    assert len(res.records) == 3
    for r in res.records:
        assert r.ok and r.output_tokens == 40
        assert r.ttft_s < r.latency_s / 4
    assert all(b["stream"] is True for b in srv.bodies)


async def test_errors_are_counted_by_status_and_request_count_is_bounded():
    async with TinyServer(delay_s=0.0, reject_every=4) as srv:
        res = await run_load(srv.url, sharegpt_like_items(seed=2), qps=500, duration_s=5.0, max_requests=40)
    assert len(res.records) == 40 == len(srv.bodies)
    s = res.summary()
    assert s["errors"] == {"429": 10}
    assert s["ok"] == 30


async def test_drain_timeout_cancels_slow_requests():
    async with TinyServer(delay_s=1.0) as srv:
        res = await run_load(
            srv.url, sharegpt_like_items(), qps=20, duration_s=0.2, max_requests=3, drain_timeout_s=0.1
        )
    assert res.records and all(not r.ok and r.error == "cancelled" for r in res.records)
    assert res.summary()["errors"] == {"cancelled": len(res.records)}


async def test_trace_replay_keeps_arrival_times_and_prompts(tmp_path):
    trace = tmp_path / "trace.jsonl"
    lines = [
        {"arrival": 0.3, "prompt": "b" * 40, "max_tokens": 5},
        {"arrival": 0.0, "prompt": "a" * 80, "max_tokens": 7},
        {"arrival": 0.9, "prompt": "c" * 8, "max_tokens": 3},
    ]
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    async with TinyServer(delay_s=0.0) as srv:
        res = await run_load(srv.url, trace_items(trace), qps=0, duration_s=2.0)
    assert [b["prompt"][0] for b in srv.bodies] == ["a", "b", "c"]
    assert [r.scheduled_at for r in res.records] == [0.0, 0.3, 0.9]
    assert [r.sent_at >= r.scheduled_at - 0.005 for r in res.records] == [True] * 3
    assert [r.output_tokens for r in res.records] == [7, 5, 3]


def test_jsonl_workload_validates_lines(tmp_path):
    good = tmp_path / "w.jsonl"
    good.write_text('{"prompt": "hi", "max_tokens": 4}\n\n{"prompt": "yo"}\n')
    items = jsonl_items(good)
    assert [(next(items).max_tokens) for _ in range(3)] == [4, 128, 4]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"max_tokens": 4}\n')
    with pytest.raises(ValueError, match="prompt"):
        list(jsonl_items(bad, cycle=False))


async def test_only_http_base_urls_are_accepted():
    with pytest.raises(ValueError):
        await run_load("file:///etc/passwd", sharegpt_like_items(), qps=1, duration_s=0.1)
