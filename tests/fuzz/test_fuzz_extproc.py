"""Fuzz Envoy's side of ext_proc against a real picker gRPC server.

Random message sequences (any order, missing or doubled ``end_of_stream``, every body
mode and unknown ones, headers-only requests, trailers, protocol_config anywhere,
hostile headers and bodies, streams the client cancels) go over a real gRPC channel to a
running :class:`~picker.service.Picker`. After each sequence:

* the stream ended cleanly (status OK, or CANCELLED when the client cancelled it), and
  every immediate response is a well-formed OpenAI-style error or answer;
* the picker logged no error (an internal failure it caught is still a bug);
* nothing stays in flight (the director's table, the pool state's in-flight load);
* the picker routes a normal request at once.
"""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from hypothesis import given
from hypothesis import strategies as st

from picker.envoy_client import EnvoyStream
from picker.protocol import (
    CONFORMANCE_SELECTION,
    DESTINATION_SERVED,
    DESTINATION_SUBSET,
    FAIRNESS_ID,
    LB_NAMESPACE,
    MODEL_REWRITE,
    OBJECTIVE,
    SUBSET_NAMESPACE,
)
from picker.service import Picker
from tests.fuzz.budget import budget
from tests.support.least_load import least_load_profile
from tests.support.pickers import loopback_config
from tests.support.snapshots import snapshot
from tests.support.waiting import wait_until

PODS = ("10.0.0.1:8000", "10.0.0.2:8000")
MAX_BODY = 4096
MODELS = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: chat}
spec:
  modelName: chat
  criticality: Critical
  poolRef: {name: pool}
  targetModels: [{name: base-v2}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: cheap}
spec: {modelName: cheap, criticality: Sheddable, poolRef: {name: pool}}
"""


def chat(model: str = "chat", **extra) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


# -- strategies ----------------------------------------------------------------------------------

PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/models?x=1",
    "/",
    "",
    "/v1/chat/completions/",
]
short_text = st.text(max_size=12)
header_value = st.one_of(short_text, st.sampled_from(["", " ", "\x00", "é" * 3, "x" * 300]))
MODEL_NAMES = ["chat", "base", "cheap"]
SELECTIONS = [PODS[0], ",".join(PODS), "garbage", "", "1.2.3.4:5"]
CONTENT_TYPES = ["text/event-stream", "application/json", "TEXT/EVENT-STREAM"]
control_names = [*MODEL_REWRITE, *OBJECTIVE, *FAIRNESS_ID]
request_header = st.one_of(
    st.tuples(st.just(":path"), st.sampled_from(PATHS)),
    st.tuples(st.just(":path"), short_text),
    st.tuples(st.just(":method"), st.sampled_from(["POST", "GET", "PUT", ""])),
    st.tuples(st.just("x-request-id"), header_value),
    st.tuples(st.sampled_from(control_names), st.one_of(st.sampled_from(MODEL_NAMES), header_value)),
    st.tuples(st.just(CONFORMANCE_SELECTION), st.sampled_from(SELECTIONS)),
    st.tuples(st.just("content-length"), st.sampled_from(["0", "12", "-1", "abc", "99999999999999999999"])),
    st.tuples(st.just("x-gateway-destination-endpoint"), st.just(PODS[1])),
    st.tuples(st.just("x-gateway-destination-endpoint-subset"), st.just("x")),
    st.tuples(st.text(max_size=8), header_value),
)
status_value = st.one_of(st.sampled_from(["200", "404", "429", "500", "503", "0", "abc", ""]), short_text)
response_header = st.one_of(
    st.tuples(st.just(":status"), status_value),
    st.tuples(st.just("content-type"), st.sampled_from(CONTENT_TYPES)),
    st.tuples(st.just(DESTINATION_SERVED), st.sampled_from([PODS[0], "garbage"])),
    st.tuples(st.just("content-length"), st.sampled_from(["10", "x"])),
    st.tuples(st.text(max_size=8), header_value),
)

request_bodies = st.one_of(
    st.sampled_from(
        [
            chat(),
            chat("base"),
            chat("cheap"),
            chat("unknown-model"),
            chat("chat", stream=True, stream_options={"include_usage": True}),
            chat("chat", max_tokens=2**40),
            chat("", max_tokens=-1),
            json.dumps({"model": "base", "prompt": [1, 2, 3]}).encode(),
            json.dumps({"model": "base", "prompt": "x" * (MAX_BODY + 10)}).encode(),
            b"[" * 5000,
            b'{"model": "chat", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}",
            b"",
            b"{}",
            b"null",
        ]
    ),
    st.binary(max_size=64),
)
sse_chunk = st.sampled_from(
    [
        b'data: {"model":"base-v2","choices":[{"delta":{"content":"a"}}]}\n\n',
        b'data: {"model":"base-v2","usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n',
        b'data: {"usage":{"prompt_tokens":-3,"completion_tokens":1e308}}\n\n',
        b"data: [DONE]\n\n",
        b"data: {not json\n\n",
        b"data: ",
        b'{"model":"base-v2","usage":{"prompt_tokens":1,"completion_tokens":2}}',
        b'{"model": 5, "usage": "x"}',
        b"\n\n",
    ]
)
response_bodies = st.one_of(sse_chunk, st.binary(max_size=48))


def _headers(items, eos: bool) -> ep.HttpHeaders:
    hm = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode("utf-8", "surrogatepass")) for k, v in items]
    )
    return ep.HttpHeaders(headers=hm, end_of_stream=eos)


def _with_subset(req: ep.ProcessingRequest, kind: int) -> ep.ProcessingRequest:
    if kind == 0:
        return req
    fields = req.metadata_context.filter_metadata[SUBSET_NAMESPACE].fields
    if kind == 1:
        for a in PODS[:1]:
            fields[DESTINATION_SUBSET].list_value.values.add().string_value = a
    elif kind == 2:
        fields[DESTINATION_SUBSET].string_value = "9.9.9.9:1, ,"
    elif kind == 3:
        fields[DESTINATION_SUBSET].number_value = 7
    else:
        req.metadata_context.filter_metadata[LB_NAMESPACE].fields[DESTINATION_SERVED].bool_value = True
    return req


req_headers_msg = st.builds(
    lambda items, eos, sub: _with_subset(ep.ProcessingRequest(request_headers=_headers(items, eos)), sub),
    st.lists(request_header, max_size=6),
    st.booleans(),
    st.integers(0, 4),
)
many_headers_msg = st.builds(
    lambda n, eos: ep.ProcessingRequest(
        request_headers=_headers(
            [(":path", "/v1/chat/completions")] + [(f"h{i}", "v") for i in range(n)], eos
        )
    ),
    st.integers(90, 130),
    st.booleans(),
)
req_body_msg = st.builds(
    lambda b, e: ep.ProcessingRequest(request_body=ep.HttpBody(body=b, end_of_stream=e)),
    request_bodies,
    st.booleans(),
)
resp_headers_msg = st.builds(
    lambda items, eos, sub: _with_subset(ep.ProcessingRequest(response_headers=_headers(items, eos)), sub),
    st.lists(response_header, max_size=4),
    st.booleans(),
    st.sampled_from([0, 4]),
)
resp_body_msg = st.builds(
    lambda b, e: ep.ProcessingRequest(response_body=ep.HttpBody(body=b, end_of_stream=e)),
    response_bodies,
    st.booleans(),
)
trailers_msg = st.sampled_from(
    [
        ep.ProcessingRequest(request_trailers=ep.HttpTrailers()),
        ep.ProcessingRequest(response_trailers=ep.HttpTrailers()),
        ep.ProcessingRequest(),  # no request at all
    ]
)
any_msg = st.one_of(
    req_headers_msg, many_headers_msg, req_body_msg, resp_headers_msg, resp_body_msg, trailers_msg
)
modes = st.sampled_from([0, 1, 2, 3, 4, 99])  # NONE, STREAMED, BUFFERED, BUFFERED_PARTIAL, DUPLEX, unknown


@st.composite
def plausible(draw) -> list[ep.ProcessingRequest]:
    """Envoy's order (headers, body chunks, response headers, body, trailers), then mutated."""
    path = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models"]))
    body = draw(request_bodies)
    cuts = sorted(draw(st.lists(st.integers(0, max(len(body), 1)), max_size=3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    items = [(":method", "POST"), (":path", path), *draw(st.lists(request_header, max_size=3))]
    seq = [ep.ProcessingRequest(request_headers=_headers(items, not body and draw(st.booleans())))]
    seq += [ep.ProcessingRequest(request_body=ep.HttpBody(body=p, end_of_stream=False)) for p in pieces]
    if seq[-1].HasField("request_body"):
        seq[-1].request_body.end_of_stream = True
    if draw(st.booleans()):
        seq.append(ep.ProcessingRequest(request_trailers=ep.HttpTrailers()))
    seq.append(draw(resp_headers_msg))
    for _ in range(draw(st.integers(0, 3))):
        seq.append(ep.ProcessingRequest(response_body=ep.HttpBody(body=draw(response_bodies))))
    seq.append(ep.ProcessingRequest(response_body=ep.HttpBody(end_of_stream=True)))
    if draw(st.booleans()):
        seq.append(ep.ProcessingRequest(response_trailers=ep.HttpTrailers()))
    # Mutations: drop, duplicate (a doubled end_of_stream), or swap messages.
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(seq) - 1))
        op = draw(st.sampled_from(["drop", "dup", "swap", "flip"]))
        if op == "drop" and len(seq) > 1:
            seq.pop(i)
        elif op == "dup":
            seq.insert(i, seq[i])
        elif op == "swap":
            j = draw(st.integers(0, len(seq) - 1))
            seq[i], seq[j] = seq[j], seq[i]
        elif op == "flip":
            which = seq[i].WhichOneof("request")
            if which in ("request_body", "response_body", "request_headers", "response_headers"):
                part = getattr(seq[i], which)
                part.end_of_stream = not part.end_of_stream
    return seq


@st.composite
def streams(draw) -> tuple[list[ep.ProcessingRequest], int | None]:
    drawn = draw(st.one_of(plausible(), st.lists(any_msg, min_size=1, max_size=8)))
    seq = [ep.ProcessingRequest.FromString(m.SerializeToString()) for m in drawn]  # copies: mutated below
    # protocol_config: on the first message (as Envoy), absent, or somewhere else too.
    where = draw(st.sampled_from(["first", "none", "anywhere"]))
    if where != "none":
        i = 0 if where == "first" else draw(st.integers(0, len(seq) - 1))
        pc = seq[i].protocol_config
        pc.request_body_mode = draw(modes)
        pc.response_body_mode = draw(modes)
        pc.send_body_without_waiting_for_header_response = draw(st.booleans())
    cancel_after = draw(st.one_of(st.none(), st.integers(0, 3)))
    return seq, cancel_after


# -- the picker under test -----------------------------------------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def served(tmp_path):
    f = tmp_path / "models.yaml"
    f.write_text(MODELS)
    cfg = loopback_config(
        config_files=[str(f)],
        unknown_model_policy="route",
        max_body_bytes=MAX_BODY,
        conformance_test_hooks=True,
        grace_period=1.0,
    )
    errors = _Errors()
    logging.getLogger("picker").addHandler(errors)
    p = Picker(cfg, profile=least_load_profile(staleness=3600))
    try:
        async with p:
            for pod in PODS:
                p.view.apply(snapshot(pod, pool="pool"))
            await p.wait_ready(10)
            async with grpc.aio.insecure_channel(p.address) as channel:
                yield p, channel, errors
    finally:
        logging.getLogger("picker").removeHandler(errors)


async def _drive(channel: grpc.aio.Channel, seq, cancel_after: int | None) -> list[ep.ProcessingResponse]:
    async def requests():
        for m in seq:
            yield m

    call = ep_grpc.ExternalProcessorStub(channel).Process(requests())
    out: list[ep.ProcessingResponse] = []
    try:
        async for resp in call:
            out.append(resp)
            if cancel_after is not None and len(out) > cancel_after:
                call.cancel()
                break
    except grpc.aio.AioRpcError as exc:
        raise AssertionError(f"stream failed: {exc.code()} {exc.details()}") from exc
    if cancel_after is None or len(out) <= cancel_after:
        assert await call.code() == grpc.StatusCode.OK, await call.details()
    return out


def _check_response(resp: ep.ProcessingResponse) -> None:
    assert resp.WhichOneof("response") is not None, "an empty ProcessingResponse"
    if resp.WhichOneof("response") == "immediate_response":
        ir = resp.immediate_response
        assert 200 <= ir.status.code <= 599, ir.status.code
        body = json.loads(ir.body)
        assert isinstance(body, dict)
        if ir.status.code >= 400:
            assert isinstance(body["error"]["message"], str)


async def _normal_request(channel: grpc.aio.Channel) -> None:
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(chat("base"), True)
    first = await s.recv()
    assert first.WhichOneof("response") == "request_headers", first
    await s.recv()  # the body
    s.response_headers()
    await s.recv()
    s.response_body(b"{}", True)
    await s.recv()
    await s.close()


@budget(120)
@given(case=streams())
async def test_any_ext_proc_stream_ends_cleanly_and_leaks_nothing(served, case):
    picker, channel, errors = served
    seq, cancel_after = case
    for resp in await _drive(channel, seq, cancel_after):
        _check_response(resp)
    await wait_until(lambda: picker.servicer.active == 0, 5, "the stream closed on the server")
    assert not picker.director.inflight, picker.director.inflight
    assert len(picker.state.inflight) == 0
    assert not errors.records, [r.getMessage() for r in errors.records]
    await _normal_request(channel)
    await wait_until(lambda: picker.servicer.active == 0, 5, "the normal stream closed")
    assert not picker.director.inflight
