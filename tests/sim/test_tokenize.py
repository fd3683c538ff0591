"""vLLM's tokenizer endpoints on simulated pods (/tokenize, /detokenize, the render API),
and SGLang's /get_load as sglang-router 0.3 reads it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from shared.tokens import estimate_tokens
from sim import tokenize
from sim.engine import SimRequest
from sim.server import PodSpec, SimCluster

MODEL = "meta-llama/Llama-2-7b-hf"


@pytest.fixture
async def pod():
    async with SimCluster([PodSpec(name="v0", lora_adapters=["ad1"])]) as c:
        yield c.pods[0]


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


def test_encode_follows_the_documented_token_count_and_keeps_prefixes():
    for text in ["", "a", "abcd", "abcde", "héllo wörld, ünïcode ✓", "x" * 4097]:
        assert len(tokenize.encode(text)) == estimate_tokens(text)
    a, b = (
        tokenize.encode("shared system prompt; question A"),
        tokenize.encode("shared system prompt; other B"),
    )
    assert a[:5] == b[:5] and a != b
    assert all(tokenize.FIRST_ID <= i < tokenize.VOCAB_SIZE for i in a)
    assert tokenize.encode("same text") == tokenize.encode("same text")  # no per-process salt
    assert tokenize.pieces("abcdefghi") == ["abcd", "efgh", "i"]


async def test_tokenize_completion_and_chat_match_the_usage_the_pod_reports(pod, http):
    prompt = "The quick brown fox jumps over the lazy dog, twice over."
    r = await http.post(pod.url + "/tokenize", json={"model": MODEL, "prompt": prompt})
    assert r.status == 200
    body = await r.json()
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == pod.cfg.max_model_len
    assert body["token_strs"] is None
    done = await http.post(
        pod.url + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2}
    )
    assert (await done.json())["usage"]["prompt_tokens"] == body["count"]

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    r = await http.post(
        pod.url + "/tokenize", json={"model": "ad1", "messages": msgs, "return_token_strs": True}
    )
    chat = await r.json()
    assert r.status == 200 and "".join(chat["token_strs"]) == "[system] be brief\n[user] hello there\n"
    done = await http.post(pod.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 2})
    assert (await done.json())["usage"]["prompt_tokens"] == chat["count"]


async def test_detokenize_gives_the_text_a_token_prompt_is_served_as(pod, http):
    ids = tokenize.encode("some words to round trip")
    r = await http.post(pod.url + "/detokenize", json={"model": MODEL, "tokens": ids})
    text = (await r.json())["prompt"]
    assert r.status == 200 and estimate_tokens(text) == len(ids)
    by_ids = await http.post(pod.url + "/tokenize", json={"prompt": text})
    assert (await by_ids.json())["count"] == len(ids)


async def test_render_completion_and_chat_shapes(pod, http):
    body = {"model": MODEL, "prompt": "hello world, render me", "max_tokens": 7, "stream": True,
            "temperature": 0.5, "priority": 2}  # fmt: skip
    r = await http.post(pod.url + "/v1/completions/render", json=body)
    assert r.status == 200
    (gen,) = await r.json()
    assert gen["request_id"].startswith("cmpl-") and gen["model"] == MODEL
    assert gen["token_ids"] == tokenize.encode(body["prompt"])
    assert gen["sampling_params"]["max_tokens"] == 7 and gen["sampling_params"]["temperature"] == 0.5
    assert gen["stream"] is True and gen["priority"] == 2 and gen["token_offsets"] is None

    r = await http.post(pod.url + "/v1/completions/render", json={"prompt": ["one", "two two"]})
    many = await r.json()
    assert [g["token_ids"] for g in many] == [tokenize.encode("one"), tokenize.encode("two two")]
    assert many[0]["sampling_params"]["max_tokens"] == 16  # the completions default

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    r = await http.post(pod.url + "/v1/chat/completions/render", json={"model": "ad1", "messages": msgs})
    gen = await r.json()
    assert r.status == 200 and isinstance(gen, dict) and gen["request_id"].startswith("chatcmpl-")
    assert gen["token_ids"] == tokenize.encode("[user] hi\n[assistant] hello\n") and gen["model"] == "ad1"
    assert pod.engine.stats().finished == 0  # rendering runs nothing on the engine


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        ("/tokenize", {"model": "nope", "prompt": "x"}, 404),
        ("/tokenize", {"prompt": 3}, 400),
        ("/tokenize", {"messages": []}, 400),
        ("/tokenize", {"prompt": "x", "return_token_strs": "yes"}, 400),
        ("/detokenize", {"tokens": [1, "2"]}, 400),
        ("/detokenize", {"tokens": [10**9]}, 400),
        ("/detokenize", {"model": "nope", "tokens": [5]}, 404),
        ("/v1/completions/render", {"model": "nope", "prompt": "x"}, 404),
        ("/v1/completions/render", {"prompt": ""}, 400),
        ("/v1/completions/render", {"prompt": "x", "max_tokens": 0}, 400),
        ("/v1/chat/completions/render", {"messages": "hi"}, 400),
    ],
)
async def test_bad_tokenizer_requests(pod, http, path, payload, status):
    r = await http.post(pod.url + path, json=payload)
    assert r.status == status
    assert (await r.json())["error"]["code"] == status
    bad_json = await http.post(pod.url + path, data=b"{not json")
    assert bad_json.status == 400


async def test_sglang_pods_answer_get_load_as_sglang_router_parses_it(http):
    """sglang-router 0.3 sums ``num_tokens`` over the array ``/get_load`` returns (one entry per DP rank)."""
    async with SimCluster([PodSpec(name="s0", flavor="sglang")]) as c:
        pod = c.pods[0]
        r = await http.post(pod.url + "/v1/completions", json={"prompt": "warm " * 200, "max_tokens": 2})
        assert r.status == 200
        pod.submit(SimRequest("held", 800, 3000))  # stays running while we look
        for _ in range(50):
            loads = await (await http.get(pod.url + "/get_load")).json()
            if loads[0]["num_tokens"] > 0:
                break
            await asyncio.sleep(0.02)
        assert isinstance(loads, list) and all(isinstance(x.get("num_tokens"), int) for x in loads)
        assert sum(x["num_tokens"] for x in loads) > 0 and loads[0]["num_reqs"] == 1
        assert (await http.post(pod.url + "/tokenize", json={"prompt": "x"})).status == 404  # vLLM-only
        pod.engine.abort("held")
