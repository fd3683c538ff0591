"""The simulated vLLM HTTP API on real 127.0.0.1 ports."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sim.engine import EngineConfig
from sim.server import PodSpec, SimCluster

MODEL = "meta-llama/Llama-2-7b-hf"


@pytest.fixture
async def cluster():
    async with SimCluster(n=2, lora_adapters=["sql-lora"]) as c:
        yield c


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


def parse_sse(raw: bytes) -> list[dict]:
    """A strict SSE parser: only ``data: <json>`` events, ending with exactly one ``data: [DONE]``."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), "stream must end with a blank line"
    events = text[:-2].split("\n\n")
    assert events[-1] == "data: [DONE]", events[-1]
    out = []
    for ev in events[:-1]:
        assert ev.startswith("data: ") and "\n" not in ev, repr(ev)
        payload = ev[len("data: ") :]
        assert payload != "[DONE]", "[DONE] must be last"
        out.append(json.loads(payload))
    return out


def metrics(text: str) -> dict:
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return fams


def sample(fams: dict, name: str, **labels) -> float:
    for s in fams[name].samples:
        if all(s.labels.get(k) == v for k, v in labels.items()) and s.name in (name, name + "_total"):
            return s.value
    raise KeyError(name)


async def test_completion_non_streaming_shape(cluster, http):
    url = "http://" + cluster.pods[0].address
    r = await http.post(
        url + "/v1/completions", json={"model": MODEL, "prompt": "hello " * 50, "max_tokens": 7}
    )
    assert r.status == 200
    body = await r.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL and body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and len(choice["text"]) == 4 * 7
    assert body["usage"] == {
        "prompt_tokens": 75,
        "completion_tokens": 7,
        "total_tokens": 82,
        "prompt_tokens_details": None,
    }


async def test_chat_non_streaming_and_default_max_tokens(cluster, http):
    url = "http://" + cluster.pods[1].address
    r = await http.post(
        url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    )
    body = await r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 3
    r = await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    body = await r.json()
    assert body["usage"]["completion_tokens"] == 16 and body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("chat", [False, True])
async def test_sse_stream_strict(cluster, http, chat):
    url = "http://" + cluster.pods[0].address
    if chat:
        path, payload = "/v1/chat/completions", {"messages": [{"role": "user", "content": "tell me" * 30}]}
    else:
        path, payload = "/v1/completions", {"prompt": "tell me " * 30}
    payload.update(model=MODEL, max_tokens=12, stream=True, stream_options={"include_usage": True})
    r = await http.post(url + path, json=payload)
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    chunks = parse_sse(await r.read())
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    body = chunks[:-1]
    assert len({c["id"] for c in chunks}) == 1
    obj = "chat.completion.chunk" if chat else "text_completion"
    assert all(c["object"] == obj and c["model"] == MODEL for c in chunks)
    if chat:
        assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in body)
    else:
        text = "".join(c["choices"][0]["text"] for c in body)
    assert len(text) == 4 * 12
    assert [c["choices"][0]["finish_reason"] for c in body][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in body[:-1])
    assert len(body) >= 5  # tokens arrive over several steps, not in one piece


async def test_stream_without_usage_has_no_usage_chunk(cluster, http):
    url = "http://" + cluster.pods[0].address
    r = await http.post(
        url + "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 3, "stream": True}
    )
    chunks = parse_sse(await r.read())
    assert all(c["choices"] for c in chunks) and "usage" not in chunks[-1]


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        ("/v1/completions", b"{not json", 400),
        ("/v1/completions", b"[1, 2]", 400),
        ("/v1/completions", {"model": MODEL}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": ""}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": 5}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": -1}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 0}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": "5"}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "stream": "yes"}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 5000}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 2, "min_tokens": 3}, 400),
        ("/v1/completions", {"model": 7, "prompt": "a"}, 400),
        ("/v1/completions", {"model": "no-such-model", "prompt": "a"}, 404),
        ("/v1/chat/completions", {"model": MODEL}, 400),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400),
        ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "hi"}]}, 400),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
    ],
)
async def test_bad_requests(cluster, http, path, payload, status):
    url = "http://" + cluster.pods[0].address + path
    if isinstance(payload, bytes):
        r = await http.post(url, data=payload, headers={"Content-Type": "application/json"})
    else:
        r = await http.post(url, json=payload)
    assert r.status == status
    err = (await r.json())["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    assert err["code"] == status


async def test_lora_load_unload_and_models(cluster, http):
    url = "http://" + cluster.pods[0].address
    models = (await (await http.get(url + "/v1/models")).json())["data"]
    assert [m["id"] for m in models] == [MODEL, "sql-lora"]
    assert models[0]["parent"] is None and models[1]["parent"] == MODEL
    r = await http.post(url + "/v1/load_lora_adapter", json={"lora_name": "food", "lora_path": "/a/food"})
    assert r.status == 200 and "food" in await r.text()
    r = await http.post(url + "/v1/load_lora_adapter", json={"lora_name": "food", "lora_path": "/a/food"})
    assert r.status == 400
    r = await http.post(url + "/v1/load_lora_adapter", json={"lora_name": "x"})
    assert r.status == 400
    models = (await (await http.get(url + "/v1/models")).json())["data"]
    card = next(m for m in models if m["id"] == "food")
    assert card["parent"] == MODEL and card["root"] == "/a/food"
    # a long request on the adapter shows up in lora_requests_info while it runs
    task = asyncio.create_task(
        http.post(url + "/v1/completions", json={"model": "food", "prompt": "q", "max_tokens": 300})
    )
    await asyncio.sleep(0.3)
    fams = metrics(await (await http.get(url + "/metrics")).text())
    info = fams["vllm:lora_requests_info"].samples
    newest = max(info, key=lambda s: s.value)
    assert newest.labels["running_lora_adapters"] == "food" and newest.labels["max_lora"] == "4"
    task.cancel()
    r = await http.post(url + "/v1/unload_lora_adapter", json={"lora_name": "food"})
    assert r.status == 200
    r = await http.post(url + "/v1/unload_lora_adapter", json={"lora_name": "food"})
    assert r.status == 404
    r = await http.post(url + "/v1/completions", json={"model": "food", "prompt": "q"})
    assert r.status == 404
    assert "food" not in [m["id"] for m in (await (await http.get(url + "/v1/models")).json())["data"]]


async def test_metrics_parse_and_gauges_move_and_cancel_frees(cluster, http):
    pod = cluster.pods[1]
    url = "http://" + pod.address
    text = await (await http.get(url + "/metrics")).text()
    fams = metrics(text)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:num_preemptions",
        "vllm:cache_config_info",
        "vllm:lora_requests_info",
        "vllm:time_to_first_token_seconds",
        "vllm:time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ):
        assert name in fams, name
    cc = fams["vllm:cache_config_info"].samples[0].labels
    assert cc["block_size"] == "16" and cc["num_gpu_blocks"] == "7463"
    run = fams["vllm:num_requests_running"].samples[0]
    assert run.labels == {"engine": "0", "model_name": MODEL} and run.value == 0
    assert fams["vllm:time_to_first_token_seconds"].type == "histogram"

    load = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    tasks = [
        asyncio.create_task(
            load.post(
                url + "/v1/completions",
                json={"model": MODEL, "prompt": f"{i} " + "w" * 2000, "max_tokens": 2000},
            )
        )
        for i in range(300)
    ]
    for _ in range(40):
        await asyncio.sleep(0.1)
        fams = metrics(await (await http.get(url + "/metrics")).text())
        if sample(fams, "vllm:num_requests_running") >= 100:
            break
    assert sample(fams, "vllm:num_requests_running") >= 100
    assert sample(fams, "vllm:num_requests_waiting") > 0  # 300 > max_num_seqs
    assert sample(fams, "vllm:kv_cache_usage_perc") > 0.3
    assert sample(fams, "vllm:prefix_cache_queries") > 0
    assert len(text) > 20_000 or len(await (await http.get(url + "/metrics")).text()) > 20_000
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await load.close()
    for _ in range(50):
        await asyncio.sleep(0.05)
        if pod.engine.num_requests == 0:
            break
    fams = metrics(await (await http.get(url + "/metrics")).text())
    assert sample(fams, "vllm:num_requests_running") == 0
    assert sample(fams, "vllm:num_requests_waiting") == 0
    assert sample(fams, "vllm:kv_cache_usage_perc") == 0.0
    assert pod.engine.aborted == 300 and pod.engine.num_requests == 0


async def test_metrics_page_counts_every_observation(cluster):
    """The live histograms reach the page: 2,000 observations in, 2,000 counted out.

    (The histogram block is re-rendered every ``refresh_s``; render speed is measured by
    ``bench.sim_bench``, not asserted here.)"""
    pod = cluster.pods[0]
    m = pod.metrics
    m.refresh_s = 0.0

    def count(page: str, family: str) -> float:
        return sum(s.value for s in metrics(page)[family].samples if s.name == family + "_count")

    before = count(pod.render_metrics(), "vllm:time_to_first_token_seconds")
    for i in range(2000):  # populate the histograms
        m.observe_request(0.01 * (i % 50), 1.0 + i % 7, 0.001, 0.02, 0.9, 100 + i, 50, 50, "length")
    page = pod.render_metrics()
    assert count(page, "vllm:time_to_first_token_seconds") == before + 2000
    assert count(page, "vllm:e2e_request_latency_seconds") - before == 2000


async def test_preemption_visible_in_metrics(http):
    cfg = EngineConfig(kv_capacity_tokens=16 * 64, max_num_seqs=16, enable_lora=False)
    async with SimCluster([PodSpec(name="tiny", engine=cfg, time_scale=0.2)]) as c:
        url = "http://" + c.pods[0].address
        rs = await asyncio.gather(
            *(
                http.post(
                    url + "/v1/completions", json={"model": MODEL, "prompt": f"{i} " * 40, "max_tokens": 200}
                )
                for i in range(8)
            )
        )
        assert all(r.status == 200 for r in rs)
        fams = metrics(await (await http.get(url + "/metrics")).text())
        assert sample(fams, "vllm:num_preemptions") > 0


async def test_prefix_cache_hits_reduce_ttft(http):
    async with SimCluster(n=1, time_scale=3.0) as c:
        url = "http://" + c.pods[0].address
        prompt = "The quick brown fox jumps over the lazy dog. " * 180  # ~2k tokens

        async def once() -> float:
            t0 = time.perf_counter()
            r = await http.post(
                url + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}
            )
            assert r.status == 200
            await r.read()
            return time.perf_counter() - t0

        cold = await once()
        warm = await once()
        assert warm < cold * 0.6, (cold, warm)
        fams = metrics(await (await http.get(url + "/metrics")).text())
        assert sample(fams, "vllm:prefix_cache_hits") > 1900


async def test_kill_and_restart_pod(http):
    async with SimCluster(n=2) as c:
        addr = c.pods[1].address
        await c.kill(1)
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://{addr}/health")
        r = await http.get(f"http://{c.pods[0].address}/health")
        assert r.status == 200
        await c.restart(1)
        assert c.pods[1].address == addr
        r = await http.get(f"http://{addr}/health")
        assert r.status == 200


async def test_kill_fails_in_flight_requests(http):
    async with SimCluster(n=1) as c:
        url = "http://" + c.pods[0].address
        task = asyncio.create_task(
            http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1000})
        )
        await asyncio.sleep(0.2)
        await c.kill(0)
        try:
            r = await task
            assert r.status >= 500
        except aiohttp.ClientError:
            pass
        assert c.pods[0].engine.num_requests == 0
