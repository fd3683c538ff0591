"""Request body parsing: the fields read, the cheap rewrite, and fuzzing (nothing but BodyError escapes)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picker.body import BodyError, flatten_messages, parse_request, path_kind
from picker.director import Director, Rejected, RequestHeaders, Routed
from picker.metrics import PickerMetrics
from picker.models import ModelTable
from picker.response import ResponseRewriter
from picker.view import PoolView
from tests.support.least_load import least_load_profile
from tests.support.snapshots import snapshot


def test_reads_only_what_it_needs_and_keeps_the_bytes():
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 12,
            "tools": [{"x": 1}],
            "seed": 3,
        }
    ).encode()
    req = parse_request(body, "/v1/chat/completions")
    assert (req.model, req.kind, req.stream, req.include_usage, req.max_tokens) == (
        "m",
        "chat",
        True,
        True,
        12,
    )
    assert req.prompt_text == "user: hi\n"
    assert req.with_model("m") is body  # no rewrite, no copy
    out = json.loads(req.with_model("other"))
    assert out == {**json.loads(body), "model": "other"}
    assert list(out) == list(json.loads(body))  # key order kept


def test_max_completion_tokens_wins():
    body = b'{"model": "m", "prompt": "x", "max_tokens": 5, "max_completion_tokens": 9}'
    assert parse_request(body, "/v1/completions").max_tokens == 9


def test_prompt_shapes():
    assert parse_request(b'{"model":"m","prompt":["ab","cd"]}', "/v1/completions").prompt_text == "abcd"
    toks = parse_request(b'{"model":"m","prompt":[1,2,3]}', "/v1/completions")
    assert toks.prompt_tokens == 3
    batch = parse_request(b'{"model":"m","prompt":[[1,2],[3]]}', "/v1/completions")
    assert batch.prompt_tokens == 3


def test_chat_flattening_is_deterministic_and_extends_with_the_conversation():
    turn1 = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    turn2 = [*turn1, {"role": "assistant", "content": None}, {"role": "user", "content": "more"}]
    assert flatten_messages(turn2).startswith(flatten_messages(turn1))


def test_path_kinds():
    assert path_kind("/v1/chat/completions?x=1") == "chat"
    assert path_kind("/v1/completions") == "completions"
    assert path_kind("/v1/embeddings") == "other"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "model": json_values,
            "messages": json_values,
            "prompt": json_values,
            "stream": json_values,
            "stream_options": json_values,
            "max_tokens": json_values,
            "max_completion_tokens": json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
)
paths = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/other", ""])


@settings(max_examples=400, deadline=None)
@given(bodies, paths)
def test_fuzz_only_body_errors_escape(body, path):
    try:
        parse_request(body, path)
    except BodyError as exc:
        assert 400 <= exc.status < 500


def _director() -> Director:
    profile = least_load_profile(staleness=3600)
    view = PoolView("default", "pool", profile.state)
    view.apply(snapshot("10.0.0.1:8000", pool="pool"))
    return Director(
        view=view,
        admission=profile.admission,
        scheduler=profile.scheduler,
        models=ModelTable([], "pool", "sheddable"),
        metrics=PickerMetrics(),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies, paths)
def test_fuzz_every_bad_body_is_a_4xx_and_every_good_one_routes(body, path):
    director = _director()
    result = director.route(RequestHeaders(path=path, request_id="r"), body, None)
    try:
        parse_request(body, path)
        valid = True
    except BodyError:
        valid = False
    if valid:
        assert isinstance(result, Routed)
        director.complete(result.inflight, 200)
    else:
        assert isinstance(result, Rejected) and 400 <= result.status < 500
        assert json.loads(result.body)["error"]["code"] == result.status
    assert not director.inflight


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=5), st.booleans())
def test_fuzz_response_rewriter_never_raises(data, cuts, sse):
    rw = ResponseRewriter("client", sse)
    points = sorted(set(cuts))
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out = b"".join(rw.feed(p, i == len(pieces) - 1) for i, p in enumerate(pieces))
    assert isinstance(out, bytes)
    rw.tokens()


def test_sse_passthrough_keeps_bytes_when_no_rewrite():
    rw = ResponseRewriter(None, True)
    stream = b'data: {"model":"m","choices":[{"delta":{}}]}\n\ndata: [DONE]\n\n'
    out = rw.feed(stream[:17], False) + rw.feed(stream[17:], True)
    assert out == stream
    assert rw.tokens() == (0, 1)


sse_events = st.lists(
    st.one_of(
        st.builds(lambda t: {"model": "target", "choices": [{"delta": {"content": t}}]}, st.text(max_size=8)),
        st.just({"model": "target", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 5}}),
        st.just({"other": 1}),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(sse_events, st.lists(st.integers(min_value=0, max_value=2000), max_size=6), st.booleans())
def test_sse_rewrite_does_not_depend_on_chunk_boundaries(events, cuts, crlf):
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    stream = b"".join(b"data: " + json.dumps(e).encode() + sep for e in events) + b"data: [DONE]" + sep
    whole = ResponseRewriter("client", True)
    expected = whole.feed(stream, True)
    split_rw = ResponseRewriter("client", True)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    got = b"".join(split_rw.feed(p, i == len(pieces) - 1) for i, p in enumerate(pieces))
    assert got == expected
    assert split_rw.tokens() == whole.tokens()
    assert b'"target"' not in got


def test_a_json_response_over_the_hold_limit_streams_through():
    rw = ResponseRewriter("client", False, buffered_limit=10)
    assert rw.feed(b'{"model": "t", ', False) == b'{"model": "t", '  # over the limit: released
    assert rw.feed(b'"x": 1}', True) == b'"x": 1}'
    assert rw.done
    small = ResponseRewriter("client", False, buffered_limit=100)
    assert small.feed(b'{"model": "t", ', False) == b""
    assert json.loads(small.feed(b'"x": 1}', True)) == {"model": "client", "x": 1}
