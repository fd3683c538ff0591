"""The OpenAI API through the whole real stack: Envoy -> 2 picker replicas (ext_proc) -> simulated vLLM pods.

One stack for the module (about 8 s to start); every test sends a few short requests.
The pods run the real ``python -m sim`` processes, fed to the pickers over NATS by real
collectors, so a pass here means the components agree on the wire, not just in units.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from bench.stack import BASE_MODEL, Stack, StackConfig
from tests.e2e.stack_helpers import SELECT, chat, completion, parse_sse, pod_by_address, pod_metrics, post

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[Stack]:
    # The tests pin requests to pods with test-epp-endpoint-selection: conformance hooks on.
    hooks = ("--conformance-test-hooks",)
    async with Stack(
        StackConfig(pickers=2, autoscaler=False, round_robin_envoy=False, picker_args=hooks)
    ) as s:
        yield s


def assert_openai_error(reply, status: int) -> None:
    assert reply.status == status, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply
    err = reply.json()["error"]
    assert isinstance(err["message"], str) and err["message"], reply
    assert err["code"] == status and isinstance(err["type"], str), reply


async def test_completion_is_served_by_a_pool_pod(stack: Stack) -> None:
    r = await post(stack.gateway_url, completion(max_tokens=5))
    assert r.status == 200, r
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == BASE_MODEL
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["text"]
    assert pod_by_address(stack, r.served), r


async def test_chat_completion(stack: Stack) -> None:
    r = await post(stack.gateway_url, chat(max_tokens=3), path="/v1/chat/completions")
    assert r.status == 200, r
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == BASE_MODEL
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("path", "make", "obj"),
    [
        ("/v1/completions", completion, "text_completion"),
        ("/v1/chat/completions", chat, "chat.completion.chunk"),
    ],
)
async def test_streaming_is_strict_sse_with_usage(stack: Stack, path, make, obj) -> None:
    body = make(max_tokens=6, stream=True, stream_options={"include_usage": True})
    r = await post(stack.gateway_url, body, path=path)
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/event-stream"), r
    events = parse_sse(r.text)
    assert all(e["object"] == obj and e["model"] == BASE_MODEL for e in events)
    body_events, last = events[:-1], events[-1]
    assert all(len(e["choices"]) == 1 for e in body_events)
    # chat opens with a role-only delta, as OpenAI does; then one chunk per token
    choices = [e["choices"][0] for e in body_events]
    tokens = [c for c in choices if c.get("text") or c.get("delta", {}).get("content")]
    assert len(tokens) == 6
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6


async def test_streaming_without_usage_has_no_usage_chunk(stack: Stack) -> None:
    r = await post(stack.gateway_url, completion(max_tokens=4, stream=True))
    assert r.status == 200, r
    events = parse_sse(r.text)
    assert len(events) == 4 and all(e["choices"] and not e.get("usage") for e in events)


async def test_model_rewrite_pod_runs_the_adapter_client_sees_its_name(stack: Stack) -> None:
    """summarize -> summarize-lora on vllm-2 (pinned with the conformance header).

    Pod-side evidence: the pod 404s the client-facing name itself, and while a long stream
    runs, its own /metrics list summarize-lora among the running adapters.
    """
    vllm2 = stack.pod("vllm-2").address
    direct = await post(f"http://{vllm2}", completion("summarize"))
    assert direct.status == 404, direct  # so a 200 through the gateway means the name was rewritten

    body = completion("summarize", max_tokens=60, stream=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(stack.gateway_url + "/v1/completions", json=body, headers={SELECT: vllm2}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["x-gateway-destination-endpoint-served"] == vllm2
        first = await resp.content.readline()
        assert json.loads(first[len(b"data: ") :])["model"] == "summarize"
        page = await pod_metrics(stack, "vllm-2")
        info = [line for line in page.splitlines() if line.startswith("vllm:lora_requests_info{")]
        assert any('running_lora_adapters="summarize-lora"' in line for line in info), info
        rest = (first + await resp.read()).decode()
    events = parse_sse(rest)
    assert events and all(e["model"] == "summarize" for e in events)


async def test_weighted_split_target_is_hidden_from_the_client(stack: Stack) -> None:
    """chat -> chat-lora-v1/v2 on vllm-1 (which loads both): every answer says "chat"."""
    vllm1 = stack.pod("vllm-1").address
    replies = await asyncio.gather(
        *(post(stack.gateway_url, completion("chat"), headers={SELECT: vllm1}) for _ in range(10))
    )
    for r in replies:
        assert r.status == 200 and r.served == vllm1, r
        assert r.json()["model"] == "chat", r


@pytest.mark.parametrize(
    ("model", "holders"),
    [("summarize", {"vllm-2"}), ("chat", {"vllm-0", "vllm-1"})],
)
async def test_adapter_requests_reach_only_pods_that_loaded_the_adapter(stack: Stack, model, holders) -> None:
    """No pinning: the pickers learn the loaded adapters from the collectors (/v1/models).

    summarize -> summarize-lora (only vllm-2 loads it); chat -> chat-lora-v1 (vllm-0, vllm-1)
    or chat-lora-v2 (vllm-1). A pod without the adapter would answer 404.
    """
    replies = await asyncio.gather(*(post(stack.gateway_url, completion(model)) for _ in range(20)))
    for r in replies:
        assert r.status == 200, r
        assert pod_by_address(stack, r.served) in holders, r
        assert r.json()["model"] == model, r


async def test_sheddable_model_rewritten_to_the_base(stack: Stack) -> None:
    r = await post(stack.gateway_url, chat("batch"), path="/v1/chat/completions")
    assert r.status == 200, r
    assert r.json()["model"] == "batch"


async def test_conformance_selection_header_is_honoured(stack: Stack) -> None:
    for pod in stack.pods:
        for _ in range(3):
            r = await post(stack.gateway_url, completion(), headers={SELECT: pod.address})
            assert r.status == 200 and r.served == pod.address, (pod.plan.name, str(r))
            assert r.headers["x-conformance-test-served-endpoint"] == pod.address
    nothing = await post(stack.gateway_url, completion(), headers={SELECT: "127.0.0.2:1"})
    assert_openai_error(nothing, 503)
    assert nothing.headers["x-llm-d-request-dropped-reason"] == "rejected-no-endpoints"


async def test_unknown_model_is_404(stack: Stack) -> None:
    r = await post(stack.gateway_url, completion("no-such-model"))
    assert_openai_error(r, 404)
    assert not r.served
    assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-unknown-model"


async def test_gateway_models_list_is_the_pickers_view(stack: Stack) -> None:
    """GET /v1/models: the client-facing names, then the base model and the adapters pods serve."""
    async with aiohttp.ClientSession() as session:
        bodies = []
        for _ in range(4):  # both picker replicas, the same answer
            async with session.get(stack.gateway_url + "/v1/models") as resp:
                assert resp.status == 200
                bodies.append(await resp.json())
    assert all(b == bodies[0] for b in bodies)
    ids = [m["id"] for m in bodies[0]["data"]]
    assert ids[:4] == sorted(["batch", "chat", "summarize", BASE_MODEL])
    assert {"chat-lora-v1", "chat-lora-v2", "summarize-lora"} <= set(ids)
    assert len(ids) == len(set(ids))


async def test_admin_paths_are_not_reachable_through_the_gateway(stack: Stack) -> None:
    holder = stack.pod("vllm-2")  # the only pod with summarize-lora
    async with aiohttp.ClientSession() as session:
        for method, path, body in (
            ("POST", "/v1/unload_lora_adapter", {"lora_name": "summarize-lora"}),
            ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/x"}),
            ("GET", "/metrics", None),
            ("GET", "/health", None),
            ("POST", "/reset_prefix_cache", None),
        ):
            async with session.request(method, stack.gateway_url + path, json=body) as resp:
                assert resp.status == 404, path
                assert (await resp.json())["error"]["code"] == 404
    served = await post(stack.gateway_url, completion("summarize"))
    assert served.status == 200 and served.served == holder.address, str(served)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/completions", b"{not json"),
        ("/v1/completions", b"[1, 2]"),
        ("/v1/completions", json.dumps({"prompt": "no model"}).encode()),
        ("/v1/completions", json.dumps({"model": BASE_MODEL}).encode()),
        ("/v1/chat/completions", json.dumps({"model": BASE_MODEL, "prompt": "not chat"}).encode()),
        ("/v1/completions", json.dumps({**completion(), "stream": "yes"}).encode()),
    ],
    ids=["malformed-json", "not-an-object", "no-model", "no-prompt", "chat-without-messages", "bad-stream"],
)
async def test_bad_requests_get_openai_400(stack: Stack, path: str, raw: bytes) -> None:
    r = await post(stack.gateway_url, raw=raw, path=path)
    assert_openai_error(r, 400)
    assert not r.served


@pytest.mark.parametrize("mib", [9, 17], ids=["over-picker-limit", "over-envoy-limit"])
async def test_oversized_body_is_413(stack: Stack, mib: int) -> None:
    """9 MiB: over the picker's 8 MiB --max-body-bytes; 17 MiB: over Envoy's 16 MiB buffer limit."""
    raw = json.dumps(completion() | {"prompt": "x" * (mib << 20)}).encode()
    r = await post(stack.gateway_url, raw=raw)
    assert_openai_error(r, 413)
