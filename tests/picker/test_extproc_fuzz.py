"""Any sequence of Envoy messages: the stream state machine never raises and never leaks an entry."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.director import Director
from picker.extproc import BUFFERED, FULL_DUPLEX, STREAMED, Exchange
from picker.metrics import PickerMetrics
from picker.models import ModelTable
from picker.view import PoolView
from tests.support.least_load import least_load_profile
from tests.support.snapshots import snapshot

GOOD = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def headers(items, eos):
    hm = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in items])
    return ep.HttpHeaders(headers=hm, end_of_stream=eos)


header_items = st.lists(
    st.sampled_from(
        [
            (":path", "/v1/chat/completions"),
            (":path", "/v1/completions"),
            (":method", "POST"),
            ("x-request-id", "same"),
            ("x-gateway-model-name-rewrite", "t"),
            ("test-epp-endpoint-selection", "10.0.0.1"),
            ("x-gateway-destination-endpoint-subset", "x"),
            ("", "empty"),
            (":status", "200"),
            (":status", "oops"),
            ("content-type", "text/event-stream"),
        ]
    ),
    max_size=6,
)
bodies = st.one_of(st.just(GOOD), st.binary(max_size=40), st.just(b'data: {"model":"t"}\n\n'))
messages = st.one_of(
    st.builds(lambda h, e: ep.ProcessingRequest(request_headers=headers(h, e)), header_items, st.booleans()),
    st.builds(
        lambda b, e: ep.ProcessingRequest(request_body=ep.HttpBody(body=b, end_of_stream=e)),
        bodies,
        st.booleans(),
    ),
    st.builds(lambda h, e: ep.ProcessingRequest(response_headers=headers(h, e)), header_items, st.booleans()),
    st.builds(
        lambda b, e: ep.ProcessingRequest(response_body=ep.HttpBody(body=b, end_of_stream=e)),
        bodies,
        st.booleans(),
    ),
    st.just(ep.ProcessingRequest(request_trailers=ep.HttpTrailers())),
    st.just(ep.ProcessingRequest(response_trailers=ep.HttpTrailers())),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(messages, max_size=8), st.sampled_from([FULL_DUPLEX, STREAMED, BUFFERED]), st.booleans())
def test_random_message_sequences(msgs, mode, without_waiting):
    profile = least_load_profile(staleness=3600)
    view = PoolView("default", "pool", profile.state)
    view.apply(snapshot("10.0.0.1:8000", pool="pool"))
    director = Director(
        view=view,
        admission=profile.admission,
        scheduler=profile.scheduler,
        models=ModelTable([], "pool", "sheddable"),
        metrics=PickerMetrics(),
        max_body_bytes=64,
    )
    ex = Exchange(director)
    if msgs:
        msgs[0].protocol_config.request_body_mode = mode
        msgs[0].protocol_config.response_body_mode = mode
        msgs[0].protocol_config.send_body_without_waiting_for_header_response = without_waiting
    for m in msgs:
        for out in ex.handle(m):
            assert isinstance(out, ep.ProcessingResponse)
            out.SerializeToString()
    ex.close()
    assert not director.inflight and not len(profile.state.inflight)
