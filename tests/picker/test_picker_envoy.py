"""The real picker behind the real Envoy (the generated bootstrap): what a client actually sees."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from picker.models import ModelTable
from picker.service import Picker
from shared.crds import InferenceModel, TargetModel
from tests.support.least_load import least_load_profile
from tests.support.pickers import loopback_config
from tests.support.snapshots import snapshot
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


class Sink:
    def __init__(self) -> None:
        self.completed: list[tuple] = []

    def on_local_assignment(self, request, address, now):
        pass

    def on_local_completion(
        self, request, address, status, prompt_tokens, output_tokens, latency_s, ttft_s, now
    ):
        self.completed.append((request.request_id, address, status, output_tokens))


async def start_server(name: str):
    """A tiny OpenAI-ish server: echoes the model it received, its name, and the body size."""
    seen: list[dict] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        seen.append(
            {
                "model": body["model"],
                "length": len(raw),
                "content_length": request.content_length,
                "chunked": request.headers.get("transfer-encoding"),
                "request_id": request.headers.get("x-request-id"),
            }
        )
        if body.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(4):
                chunk = {"model": body["model"], "choices": [{"delta": {"content": f"w{i}"}}], "server": name}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            usage = {
                "model": body["model"],
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4},
            }
            await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response(
            {
                "model": body["model"],
                "server": name,
                "choices": [{"text": "ok"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            }
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_get("/v1/models", lambda r: web.json_response({"server": name}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}", seen


@pytest.fixture(params=["FULL_DUPLEX_STREAMED", "BUFFERED"])
async def stack(request, envoy_binary):
    a_runner, a, a_seen = await start_server("a")
    b_runner, b, b_seen = await start_server("b")
    cfg = loopback_config()
    p = Picker(cfg, profile=least_load_profile(staleness=3600), sink=Sink())
    p._set_models(
        ModelTable(
            [InferenceModel("chat", "default", "chat", "pool", "Critical", (TargetModel("base-v2"),))],
            "pool",
            "reject",
        )
    )
    await p.start()
    p.view.apply(snapshot(a, pool="pool"))
    p.view.apply(snapshot(b, pool="pool", waiting=1))
    opts = BootstrapOptions(
        pickers=(p.address,),
        picker_health_port=p.health_port,
        listen_address="127.0.0.1",
        listen_port=0,
        admin_port=0,
        request_body_mode=request.param,
    )
    try:
        async with (
            EnvoyProcess(build_bootstrap(opts), envoy_binary) as envoy,
            aiohttp.ClientSession() as http,
        ):
            yield {
                "picker": p,
                "url": f"http://127.0.0.1:{envoy.port}",
                "http": http,
                "a": (a, a_seen),
                "b": (b, b_seen),
            }
    finally:
        await p.stop(grace=0.5)
        await a_runner.cleanup()
        await b_runner.cleanup()


def chat(model="chat", **kw) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **kw}


async def test_json_request_is_routed_rewritten_and_restored(stack):
    http, p = stack["http"], stack["picker"]
    async with http.post(
        stack["url"] + "/v1/chat/completions", json=chat(), headers={"x-request-id": "e2e-1"}
    ) as r:
        assert r.status == 200, await r.text()
        out = await r.json()
    assert out["model"] == "chat" and out["server"] == "a"  # restored for the client
    _, seen = stack["a"]
    assert seen[-1]["model"] == "base-v2"
    assert seen[-1]["content_length"] in (None, seen[-1]["length"])  # chunked or exact
    await wait_until(lambda: not p.director.inflight, 5)
    # Envoy (an edge proxy here) replaces a client's x-request-id; the picker and the model
    # server see the same id, which is what matters for accounting across replicas.
    assert p.sink.completed[-1] == (seen[-1]["request_id"], stack["a"][0], 200, 2)


async def test_sse_stream_is_restored_and_counted(stack):
    http, p = stack["http"], stack["picker"]
    body = chat(stream=True, stream_options={"include_usage": True})
    async with http.post(
        stack["url"] + "/v1/chat/completions", json=body, headers={"x-request-id": "e2e-sse"}
    ) as r:
        assert r.status == 200
        text = (await r.read()).decode()
    events = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
    assert len(events) == 5 and all(e["model"] == "chat" for e in events)
    assert text.rstrip().endswith("data: [DONE]")
    await wait_until(lambda: not p.director.inflight and p.sink.completed, 5)
    assert p.sink.completed[-1][0] == stack["a"][1][-1]["request_id"]
    assert p.sink.completed[-1][2:] == (200, 4)


async def test_large_body_reaches_the_model_server_intact(stack):
    http = stack["http"]
    big = chat(messages=[{"role": "user", "content": "z" * 300_000}])
    async with http.post(stack["url"] + "/v1/chat/completions", json=big) as r:
        assert r.status == 200
    _, seen = stack["a"]
    assert seen[-1]["length"] > 300_000
    assert seen[-1]["content_length"] in (None, seen[-1]["length"])
    assert seen[-1]["model"] == "base-v2"


async def test_conformance_header_and_errors_through_envoy(stack):
    http, p = stack["http"], stack["picker"]
    b_addr = stack["b"][0]
    pin = {"test-epp-endpoint-selection": b_addr}
    # Off by default: the test header pins nothing, and no served endpoint is echoed.
    async with http.post(stack["url"] + "/v1/chat/completions", json=chat(), headers=pin) as r:
        assert (await r.json())["server"] == "a"
        assert "x-conformance-test-served-endpoint" not in r.headers
    p.director.conformance_hooks = True  # --conformance-test-hooks
    try:
        async with http.post(stack["url"] + "/v1/chat/completions", json=chat(), headers=pin) as r:
            assert (await r.json())["server"] == "b"
            # The gateway's word for who served (this Envoy reports it in a response header).
            assert r.headers["x-conformance-test-served-endpoint"] == b_addr
    finally:
        p.director.conformance_hooks = False
    async with http.post(stack["url"] + "/v1/chat/completions", json=chat("nope")) as r:
        assert r.status == 404
        assert (await r.json())["error"]["type"] == "NotFoundError"
        assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-unknown-model"
    async with http.post(
        stack["url"] + "/v1/chat/completions", data=b"{oops", headers={"content-type": "application/json"}
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == 400
        assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-bad-request"
    # The gateway's own model list, from the picker's view (not one pod's answer).
    async with http.get(stack["url"] + "/v1/models") as r:
        assert r.status == 200
        assert [m["id"] for m in (await r.json())["data"]] == ["chat", "base"]
    # Nothing but the inference API goes through: no pod's /metrics or admin endpoints.
    for method, path in (("GET", "/metrics"), ("POST", "/v1/unload_lora_adapter"), ("GET", "/health")):
        async with http.request(method, stack["url"] + path, json={"lora_name": "x"}) as r:
            assert r.status == 404, path
            assert (await r.json())["error"]["code"] == 404
    await wait_until(lambda: not stack["picker"].director.inflight, 5)


async def test_too_many_client_headers_get_a_clear_431_never_an_empty_503(stack):
    """Issue #19 finding 5: 91-96 client headers plus the picker's own overflowed Envoy's 100."""
    http, url = stack["http"], stack["url"] + "/v1/chat/completions"
    # aiohttp adds 6 headers of its own; past 100 in all, Envoy's codec refuses the request itself.
    statuses = set()
    for n in range(80, 95):
        headers = {f"x-client-{i}": "v" for i in range(n)}
        async with http.post(url, json=chat(), headers=headers) as r:
            body = await r.read()
            statuses.add(r.status)
            if r.status == 200:
                assert json.loads(body)["server"] in ("a", "b"), n
                continue
            assert r.status == 431, (n, r.status, body)
            err = json.loads(body)["error"]
            assert err["code"] == 431 and "headers" in err["message"], n
            assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-bad-request"
    assert statuses == {200, 431}  # the limit sits inside the range tried
    await wait_until(lambda: not stack["picker"].director.inflight, 5)
