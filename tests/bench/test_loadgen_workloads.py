"""The synthetic workloads share exactly the prefixes they intend, and a streamed TTFT is a first token.

Regression (issue #20): ``text_for_tokens`` used to cycle nine words from ``seed % 9``, so
the "ShareGPT-like" load was nine prompt families and the pods hit 77% of its prompt tokens
under round-robin. Here the leading blocks of many prompts are hashed as the pods hash them
(``shared.hashing``) and fed to an unbounded cache: on a load without shared prefixes, no
block may be found in it.
"""

from __future__ import annotations

import asyncio
import itertools
import json

from aiohttp import web

from bench.demo import shared_prefix_items
from bench.loadgen import run_load, sharegpt_like_items
from shared.hashing import prefix_block_hashes
from shared.tokens import estimate_tokens, text_for_tokens

MODEL = "meta-llama/Llama-2-7b-hf"


def cache_hits(prompts: list[str]) -> tuple[int, int]:
    """(blocks found in an unbounded shared cache, blocks looked up) over ``prompts`` in order."""
    seen: set[int] = set()
    hits = total = 0
    for p in prompts:
        hashes = prefix_block_hashes(MODEL, p)
        total += len(hashes)
        hits += sum(1 for h in hashes if h in seen)
        seen.update(hashes)
    return hits, total


def test_sharegpt_like_prompts_share_no_prefix_block():
    prompts = [it.prompt for it in itertools.islice(sharegpt_like_items(seed=1), 300)]
    hits, total = cache_hits(prompts)
    assert total > 1000
    assert hits / total < 0.001  # 9 families made this ~0.8


def test_text_for_tokens_is_exact_deterministic_and_seed_distinct():
    for n in (1, 2, 3, 17, 500):
        assert estimate_tokens(text_for_tokens(n, seed=n)) == n
    assert text_for_tokens(100, seed=7) == text_for_tokens(100, seed=7)
    firsts = {text_for_tokens(16, seed=s) for s in range(1000)}  # one 64-character block each
    assert len(firsts) == 1000


def test_shared_prefix_prompts_share_their_group_system_prompt_and_nothing_else():
    gen = shared_prefix_items(seed=3, groups=4, system_tokens=256, question_tokens=64, output_tokens=8)
    prompts = [it.prompt for it in itertools.islice(gen, 200)]
    hits, _ = cache_hits(prompts)
    # every prompt after its group's first hits exactly the full blocks of its system prompt
    expected, groups = 0, set()
    for p in prompts:
        group = p.split("]", 1)[0]
        if group in groups:
            expected += p.index("\n[question") // 64
        groups.add(group)
    assert len(groups) == 4
    assert hits == expected > 0


async def test_streamed_ttft_waits_for_the_first_token_not_the_role_chunk():
    """A chat stream opens with a role-only chunk at once (as vLLM and the sim do); TTFT is later."""
    delay = 0.3

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        await resp.write(b"data: " + json.dumps(role).encode() + b"\n\n")
        await asyncio.sleep(delay)
        for _ in range(3):
            await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        gen = sharegpt_like_items(seed=2)
        res = await run_load(
            url, gen, qps=50, duration_s=0.5, max_requests=2, stream=True, path="/v1/chat/completions"
        )
    finally:
        await runner.cleanup()
    assert res.records and all(r.ok for r in res.records)
    assert all(r.ttft_s >= delay for r in res.records)
    assert all(r.output_tokens == 3 for r in res.records)  # no usage chunk: content chunks counted, role not
