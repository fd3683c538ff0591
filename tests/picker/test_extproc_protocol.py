"""The ext_proc protocol, through a real gRPC channel with the test playing Envoy."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.envoy_client import EnvoyStream, headers_of
from picker.extproc import MAX_CHUNK
from picker.models import ModelTable
from picker.service import Picker
from tests.support.least_load import least_load_profile
from tests.support.pickers import loopback_config, standard_models
from tests.support.snapshots import snapshot

DEST = "x-gateway-destination-endpoint"


class RecordingSink:
    def __init__(self) -> None:
        self.assigned: list[tuple[str, str]] = []
        self.completed: list[tuple[str, str, int, int, int]] = []

    def on_local_assignment(self, request, address, now):
        self.assigned.append((request.request_id, address))

    def on_local_completion(
        self, request, address, status, prompt_tokens, output_tokens, latency_s, ttft_s, now
    ):
        self.completed.append((request.request_id, address, status, prompt_tokens, output_tokens))


@pytest.fixture
async def picker():
    cfg = loopback_config(
        max_body_bytes=200_000,
    )
    p = Picker(cfg, profile=least_load_profile(staleness=3600), sink=RecordingSink())
    p._set_models(standard_models())
    await p.start()
    p.view.apply(snapshot("10.0.0.1:8000", pool="pool"))
    p.view.apply(snapshot("10.0.0.2:8000", pool="pool", waiting=2))
    try:
        yield p
    finally:
        await p.stop(grace=0.5)


@pytest.fixture
async def channel(picker):
    async with grpc.aio.insecure_channel(picker.address) as ch:
        yield ch


def chat(model: str = "base", text: str = "hello there", **extra) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra}).encode()


def split(data: bytes, n: int) -> list[bytes]:
    size = -(-len(data) // n)
    return [data[i : i + size] for i in range(0, len(data), size)]


def send_body(s: EnvoyStream, body: bytes, chunks: int = 3) -> None:
    parts = split(body, chunks)
    for i, part in enumerate(parts):
        s.request_body(part, i == len(parts) - 1)


def streamed_body(responses) -> tuple[bytes, list[int], bool]:
    data, sizes, eos = b"", [], False
    for r in responses:
        sr = r.request_body.response.body_mutation.streamed_response
        data += sr.body
        sizes.append(len(sr.body))
        eos = sr.end_of_stream
    return data, sizes, eos


async def test_full_duplex_defers_headers_until_end_of_body(picker, channel):
    s = EnvoyStream(channel).open()
    body = chat()
    s.request_headers(headers={"x-request-id": "req-1"})
    send_body(s, body, 3)
    headers = await s.recv()
    assert headers.WhichOneof("response") == "request_headers"
    common = headers.request_headers.response
    assert common.clear_route_cache
    h = headers_of(common.header_mutation)
    assert h[DEST] == "10.0.0.1:8000"  # the header names the choice only
    assert h["content-length"] == str(len(body))
    assert "x-request-id" not in h  # the client's id passes through untouched
    lb = headers.dynamic_metadata.fields["envoy.lb"].struct_value.fields[DEST].string_value
    assert lb == "10.0.0.1:8000,10.0.0.2:8000"  # the metadata: choice first, then the fallback
    data, _, eos = streamed_body([await s.recv()])
    assert data == body and eos
    assert picker.sink.assigned == [("req-1", "10.0.0.1:8000")]
    s.response_headers()
    assert (await s.recv()).WhichOneof("response") == "response_headers"
    s.response_body(b'{"model":"base","usage":{"prompt_tokens":4,"completion_tokens":9}}', True)
    out = await s.recv()
    assert out.response_body.response.body_mutation.streamed_response.end_of_stream
    await s.close()
    assert picker.sink.completed == [("req-1", "10.0.0.1:8000", 200, 4, 9)]
    assert not picker.director.inflight and not len(picker.state.inflight)


async def test_buffered_answers_headers_then_routes_on_the_body(picker, channel):
    s = EnvoyStream(channel, "BUFFERED").open()
    s.request_headers(headers={"x-request-id": "b-1"})
    first = await s.recv()
    assert first.WhichOneof("response") == "request_headers"
    assert DEST not in headers_of(first.request_headers.response.header_mutation)
    body = chat("chat")  # rewritten to base-v2
    s.request_body(body, True)
    r = await s.recv()
    common = r.request_body.response
    assert common.clear_route_cache
    h = headers_of(common.header_mutation)
    new_body = common.body_mutation.body
    assert json.loads(new_body)["model"] == "base-v2"
    assert h["content-length"] == str(len(new_body))
    assert h[DEST] == "10.0.0.1:8000"
    lb = r.dynamic_metadata.fields["envoy.lb"].struct_value.fields[DEST].string_value
    assert lb == "10.0.0.1:8000,10.0.0.2:8000"
    await s.close()
    assert not picker.director.inflight


async def test_streamed_without_waiting_defers_and_answers_every_chunk(picker, channel):
    s = EnvoyStream(channel, "STREAMED", without_waiting=True).open()
    s.request_headers()
    body = chat(text="x" * 500)
    send_body(s, body, 3)
    out = await s.recv_n(4)
    assert out[0].WhichOneof("response") == "request_headers"
    assert headers_of(out[0].request_headers.response.header_mutation)[DEST]
    assert all(o.request_body.response.body_mutation.clear_body for o in out[1:3])
    assert out[3].request_body.response.body_mutation.body == body


async def test_streamed_with_waiting_answers_headers_at_once(picker, channel):
    s = EnvoyStream(channel, "STREAMED").open()
    s.request_headers()
    assert (await s.recv()).WhichOneof("response") == "request_headers"
    body = chat()
    parts = split(body, 2)
    s.request_body(parts[0], False)
    assert (await s.recv()).request_body.response.body_mutation.clear_body
    s.request_body(parts[1], True)
    last = (await s.recv()).request_body.response
    assert last.body_mutation.body == body
    assert headers_of(last.header_mutation)[DEST]


async def test_large_body_comes_back_in_62000_byte_chunks(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers()
    body = chat("chat", text="y" * 150_000)
    send_body(s, body, 7)
    headers = await s.recv()
    length = int(headers_of(headers.request_headers.response.header_mutation)["content-length"])
    responses = []
    while (
        not responses or not responses[-1].request_body.response.body_mutation.streamed_response.end_of_stream
    ):
        responses.append(await s.recv())
    data, sizes, eos = streamed_body(responses)
    assert eos and len(data) == length and len(responses) == -(-length // MAX_CHUNK) > 1
    assert all(size <= MAX_CHUNK for size in sizes)
    rewritten = json.loads(data)
    assert rewritten["model"] == "base-v2"
    assert rewritten["messages"] == json.loads(body)["messages"]


async def test_duplicate_end_of_stream_is_ignored(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-request-id": "dup"})
    s.request_body(chat(), True)
    s.request_body(b"", True)  # Envoy's duplicate end_of_stream
    await s.recv_n(2)
    s.response_headers()
    # The next answer is the response-headers one: nothing was emitted for the duplicate.
    assert (await s.recv()).WhichOneof("response") == "response_headers"
    s.response_body(b"{}", True)
    await s.recv()
    await s.close()
    assert picker.sink.assigned == [("dup", "10.0.0.1:8000")]
    assert len(picker.sink.completed) == 1


async def test_headers_only_request_goes_to_an_endpoint(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers(path="/v1/models/base", method="GET", end_of_stream=True)
    r = await s.recv()
    h = headers_of(r.request_headers.response.header_mutation)
    assert h[DEST] == "10.0.0.1:8000"  # the least busy one
    assert r.request_headers.response.clear_route_cache
    assert "x-request-id" in h  # generated and passed upstream
    await s.close()
    assert not picker.sink.assigned  # no accounting for requests without model work


async def test_strips_client_destination_headers(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers(
        headers={
            "x-gateway-destination-endpoint-served": "6.6.6.6:1",
            "x-gateway-destination-endpoint": "6.6.6.6:1",
        }
    )
    s.request_body(chat(), True)
    r = await s.recv()
    mut = r.request_headers.response.header_mutation
    assert "x-gateway-destination-endpoint-served" in list(mut.remove_headers)
    assert headers_of(mut)[DEST] != "6.6.6.6:1"


async def immediate_of(s: EnvoyStream) -> tuple[int, dict]:
    r = await s.recv()
    assert r.WhichOneof("response") == "immediate_response", r
    return r.immediate_response.status.code, json.loads(r.immediate_response.body)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b"[1, 2]", None),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        ("/v1/chat/completions", b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "model"),
        ("/v1/chat/completions", b'{"model": "base", "messages": []}', "messages"),
        ("/v1/chat/completions", b'{"model": "base"}', "messages"),
        ("/v1/completions", b'{"model": "base", "prompt": ""}', "prompt"),
        ("/v1/completions", b'{"model": "base", "prompt": {"a": 1}}', "prompt"),
        ("/v1/completions", b'{"model": "base", "prompt": "x", "stream": "yes"}', "stream"),
        ("/v1/completions", b'{"model": "base", "prompt": "x", "max_tokens": -1}', "max_tokens"),
    ],
)
async def test_bad_bodies_get_400(picker, channel, path, body, param):
    s = EnvoyStream(channel).open()
    s.request_headers(path=path)
    s.request_body(body, True)
    status, err = await immediate_of(s)
    assert status == 400
    assert err["error"]["type"] == "BadRequestError"
    assert err["error"]["param"] == param


async def test_unknown_model_is_404_under_reject(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(chat("nope"), True)
    status, err = await immediate_of(s)
    assert status == 404 and "nope" in err["error"]["message"]


async def test_unknown_model_passes_through_as_sheddable(picker, channel):
    picker._set_models(ModelTable([], "pool", "sheddable"))
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(chat("nope"), True)
    r = await s.recv()
    assert headers_of(r.request_headers.response.header_mutation)[DEST]
    data, _, _ = streamed_body([await s.recv()])
    assert json.loads(data)["model"] == "nope"


async def test_oversize_body_is_413_before_the_end(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(b"x" * 150_000, False)
    s.request_body(b"x" * 150_000, False)  # crosses 200,000: answered without waiting for the end
    status, err = await immediate_of(s)
    assert status == 413 and err["error"]["code"] == 413


async def test_sheddable_is_shed_with_429_on_a_saturated_pool(picker, channel):
    for i, addr in enumerate(("10.0.0.1:8000", "10.0.0.2:8000")):
        picker.view.apply(snapshot(addr, pool="pool", seq=10 + i, waiting=50, kv_usage=0.95))
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(chat("cheap"), True)
    status, err = await immediate_of(s)
    assert status == 429 and err["error"]["type"] == "RateLimitError"
    s2 = EnvoyStream(channel).open()  # Critical is never shed
    s2.request_headers()
    s2.request_body(chat("chat"), True)
    assert (await s2.recv()).WhichOneof("response") == "request_headers"
    metric = picker.registry.get_sample_value(
        "inference_model_request_error_total",
        {"model_name": "cheap", "target_model_name": "cheap", "error_code": "429"},
    )
    assert metric == 1


async def test_no_endpoints_is_503(picker, channel):
    picker.view.endpoints.clear()
    picker.view._list = None
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(chat(), True)
    status, _ = await immediate_of(s)
    assert status == 503


async def test_empty_subset_hint_is_503(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers(subset=[])
    s.request_body(chat(), True)
    status, _ = await immediate_of(s)
    assert status == 503


async def test_subset_hint_restricts_candidates(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers(subset=["10.0.0.2:8000"])
    s.request_body(chat(), True)
    r = await s.recv()
    assert headers_of(r.request_headers.response.header_mutation)[DEST] == "10.0.0.2:8000"


@pytest.mark.parametrize("selection", ["10.0.0.2", "10.0.0.2:8000", " 10.0.0.9 , 10.0.0.2:8000"])
async def test_conformance_header_restricts_candidates(picker, channel, selection):
    picker.director.conformance_hooks = True  # --conformance-test-hooks
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"test-epp-endpoint-selection": selection})
    s.request_body(chat(), True)
    r = await s.recv()
    assert headers_of(r.request_headers.response.header_mutation)[DEST] == "10.0.0.2:8000"


async def test_not_ready_is_503(picker, channel):
    picker.view.bootstrapped = False
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(chat(), True)
    status, _ = await immediate_of(s)
    assert status == 503


async def test_model_rewrite_json_both_directions(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(chat("chat"), True)
    await s.recv()
    data, _, _ = streamed_body([await s.recv()])
    assert json.loads(data)["model"] == "base-v2"
    s.response_headers(extra={"content-length": "99"})
    rh = await s.recv()
    assert "content-length" in list(rh.response_headers.response.header_mutation.remove_headers)
    resp = json.dumps(
        {
            "id": "x",
            "model": "base-v2",
            "choices": [{"text": "hi"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
    ).encode()
    s.response_body(resp[:10], False)
    s.response_body(resp[10:], True)
    out = await s.recv()
    sr = out.response_body.response.body_mutation.streamed_response
    assert sr.end_of_stream and json.loads(sr.body)["model"] == "chat"
    await s.close()
    assert (
        picker.registry.get_sample_value(
            "inference_model_output_tokens_sum", {"model_name": "chat", "target_model_name": "base-v2"}
        )
        == 2
    )


def sse(model: str, n: int, usage: bool) -> bytes:
    events = [
        b"data: "
        + json.dumps({"id": "c", "model": model, "choices": [{"delta": {"content": "w"}}]}).encode()
        + b"\n\n"
        for _ in range(n)
    ]
    if usage:
        events.append(
            b"data: "
            + json.dumps(
                {
                    "id": "c",
                    "model": model,
                    "choices": [],
                    "usage": {"prompt_tokens": 6, "completion_tokens": n},
                }
            ).encode()
            + b"\n\n"
        )
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


@pytest.mark.parametrize("usage", [True, False])
async def test_model_rewrite_and_token_count_over_sse(picker, channel, usage):
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-request-id": f"sse-{usage}"})
    opts = {"stream": True, "stream_options": {"include_usage": usage}}
    s.request_body(chat("chat", **opts), True)
    await s.recv_n(2)
    s.response_headers(content_type="text/event-stream")
    await s.recv()
    stream = sse("base-v2", 5, usage)
    out = b""
    parts = split(stream, 7)  # cuts events in the middle
    for i, part in enumerate(parts):
        s.response_body(part, i == len(parts) - 1)
    while True:
        sr = (await s.recv()).response_body.response.body_mutation.streamed_response
        out += sr.body
        if sr.end_of_stream:
            break
    await s.close()
    events = [e for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert len(events) == 5 + usage
    assert all(json.loads(e[6:])["model"] == "chat" for e in events)
    assert out.endswith(b"data: [DONE]\n\n")
    (rid, _, status, _, output) = picker.sink.completed[-1]
    assert (rid, status, output) == (f"sse-{usage}", 200, 5)


async def test_rewrite_header_overrides_the_split(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-gateway-model-name-rewrite": "adapter-7"})
    s.request_body(chat("chat"), True)
    await s.recv()
    data, _, _ = streamed_body([await s.recv()])
    assert json.loads(data)["model"] == "adapter-7"


async def test_cancel_releases_in_flight_accounting(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-request-id": "gone"})
    s.request_body(chat(), True)
    await s.recv_n(2)
    assert "gone" in picker.director.inflight and len(picker.state.inflight)
    s.cancel()
    from tests.support.waiting import wait_until

    await wait_until(lambda: not picker.director.inflight, 5, "in-flight entry released")
    assert not len(picker.state.inflight)
    assert picker.sink.completed == [("gone", "10.0.0.1:8000", 499, picker.sink.completed[0][3], 0)]
    assert picker.registry.get_sample_value("inference_model_running_requests", {"model_name": "base"}) == 0


async def test_error_status_releases_at_response_headers(picker, channel):
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-request-id": "e500"})
    s.request_body(chat(), True)
    await s.recv_n(2)
    s.response_headers(status=500)
    await s.recv()
    assert not picker.director.inflight
    assert picker.sink.completed[0][2] == 500


async def test_many_streams_leave_nothing_in_flight(picker, channel):
    import asyncio

    async def one(i: int) -> None:
        s = EnvoyStream(channel).open()
        s.request_headers(headers={"x-request-id": f"m{i}"})
        s.request_body(chat(), True)
        await s.recv_n(2)
        if i % 3 == 0:
            s.cancel()
            return
        s.response_headers(status=200 if i % 3 == 1 else 503)
        await s.recv()
        s.response_body(b"{}", True)
        await s.recv()
        await s.close()

    await asyncio.gather(*(one(i) for i in range(30)))
    from tests.support.waiting import wait_until

    await wait_until(lambda: not picker.director.inflight, 5, "all released")
    assert not len(picker.state.inflight)
    assert len(picker.sink.assigned) == len(picker.sink.completed) == 30


async def test_grpc_health_serves_when_ready(picker):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.health_port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        from tests.support.waiting import wait_until

        async def status() -> int:
            return (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status

        last = []

        async def poll():
            last.append(await status())
            return last[-1] == health_pb2.HealthCheckResponse.SERVING

        for _ in range(100):
            if await poll():
                break
            import asyncio

            await asyncio.sleep(0.02)
        assert last[-1] == health_pb2.HealthCheckResponse.SERVING
        picker.view.bootstrapped = False
        await wait_until(lambda: not picker.is_ready(), 2)
        for _ in range(100):
            if await status() == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            import asyncio

            await asyncio.sleep(0.02)
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_trailers_end_the_body_in_duplex_mode(picker, channel):
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-request-id": "trl"})
    body = chat("chat")
    s.request_body(body, False)  # the body never says end_of_stream: trailers follow
    s.queue.put_nowait(ep.ProcessingRequest(request_trailers=ep.HttpTrailers(trailers=base_pb2.HeaderMap())))
    out = await s.recv_n(3)
    assert out[0].WhichOneof("response") == "request_headers"
    assert json.loads(out[1].request_body.response.body_mutation.streamed_response.body)["model"] == "base-v2"
    assert out[2].WhichOneof("response") == "request_trailers"
    s.response_headers()
    await s.recv()
    s.response_body(b'{"model": "base-v2", "usage": {"completion_tokens": 3}}', False)
    s.queue.put_nowait(ep.ProcessingRequest(response_trailers=ep.HttpTrailers(trailers=base_pb2.HeaderMap())))
    flushed, trailers = await s.recv_n(2)
    assert json.loads(flushed.response_body.response.body_mutation.streamed_response.body)["model"] == "chat"
    assert trailers.WhichOneof("response") == "response_trailers"
    await s.close()
    assert picker.sink.completed[-1][0] == "trl" and picker.sink.completed[-1][4] == 3


async def test_internal_errors_become_500_and_the_stream_survives(picker, channel, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("scheduler bug")

    monkeypatch.setattr(picker.scheduler, "schedule", broken)
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(chat(), True)
    status, err = await immediate_of(s)
    assert status == 500 and err["error"]["type"] == "InternalServerError"
    monkeypatch.undo()

    import picker.response as response_mod

    monkeypatch.setattr(response_mod.ResponseRewriter, "feed", broken)
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-request-id": "rb"})
    s.request_body(chat(), True)
    await s.recv_n(2)
    s.response_headers()
    await s.recv()
    s.response_body(b'{"a": 1}', True)  # the response-path bug: passed through unchanged
    sr = (await s.recv()).response_body.response.body_mutation.streamed_response
    assert (sr.body, sr.end_of_stream) == (b'{"a": 1}', True)
    await s.close()
    from tests.support.waiting import wait_until

    await wait_until(lambda: not picker.director.inflight, 5, "released at stream end")


@pytest.mark.parametrize("mode", ["BUFFERED", "STREAMED"])
async def test_response_path_in_one_to_one_modes(picker, channel, mode):
    s = EnvoyStream(channel, "BUFFERED", response_mode=mode).open()
    s.request_headers(headers={"x-request-id": f"r-{mode}"})
    await s.recv()
    s.request_body(chat("chat"), True)
    await s.recv()
    s.response_headers()
    await s.recv()
    resp = json.dumps({"model": "base-v2", "usage": {"prompt_tokens": 1, "completion_tokens": 6}}).encode()
    parts = [resp] if mode == "BUFFERED" else split(resp, 3)
    for i, part in enumerate(parts):
        s.response_body(part, i == len(parts) - 1)
    answers = [(await s.recv()).response_body.response.body_mutation for _ in parts]
    if mode == "STREAMED":  # JSON is held back until the end, then sent whole
        assert all(a.clear_body for a in answers[:-1])
    assert json.loads(answers[-1].body)["model"] == "chat"
    await s.close()
    assert picker.sink.completed[-1] == (f"r-{mode}", "10.0.0.1:8000", 200, 1, 6)


async def test_one_structured_log_line_per_request(picker, channel, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="picker.requests")
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-request-id": "logged", "x-gateway-inference-fairness-id": "tenant-a"})
    s.request_body(chat("chat"), True)
    await s.recv_n(2)
    s.response_headers()
    await s.recv()
    s.response_body(b'{"usage": {"completion_tokens": 2}}', True)
    await s.recv()
    await s.close()
    lines = [r for r in caplog.records if r.name == "picker.requests" and r.request_id == "logged"]
    assert len(lines) == 1
    r = lines[0]
    assert (r.model, r.target_model, r.endpoint, r.status, r.fairness_id) == (
        "chat",
        "base-v2",
        "10.0.0.1:8000",
        200,
        "tenant-a",
    )
    assert r.decision_us >= 0 and r.output_tokens == 2
