"""Issue #19: nothing one client sends may hurt another (regression tests, one per finding).

Findings 1, 3 and 4 go through a real gRPC channel with the test playing Envoy; finding 2
through the director and the real Prometheus exposition.
"""

from __future__ import annotations

import json
import random
import string

import pytest
from prometheus_client import generate_latest

from picker.body import BodyError, parse_request
from picker.director import Director, Rejected, RequestHeaders, Routed
from picker.envoy_client import EnvoyStream
from picker.metrics import LABEL_LIMIT, PickerMetrics
from picker.models import ModelTable
from picker.protocol import Dropped
from picker.view import PoolView
from tests.picker.test_extproc_protocol import channel, immediate_of, picker  # noqa: F401 (fixtures)
from tests.support.least_load import least_load_profile
from tests.support.snapshots import snapshot

DROPPED = "x-llm-d-request-dropped-reason"
HUGE = 10**30


async def _rejected(s: EnvoyStream) -> tuple[int, dict, dict]:
    r = await s.recv()
    assert r.WhichOneof("response") == "immediate_response", r
    ir = r.immediate_response
    headers = {h.header.key: h.header.raw_value.decode() for h in ir.headers.set_headers}
    return ir.status.code, json.loads(ir.body), headers


# -- finding 1: out-of-range numbers are refused at the edge ------------------------------------


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": HUGE}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 2**63}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_completion_tokens": HUGE}, "max_completion_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -5}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 12.5}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 1e300}, "max_tokens"),
        ("/v1/completions", {"prompt": [1, HUGE, 3]}, "prompt"),
        ("/v1/completions", {"prompt": [1, -2, 3]}, "prompt"),
        ("/v1/completions", {"prompt": [[1, 2], [HUGE]]}, "prompt"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": HUGE},
            "max_tokens",
        ),
    ],
)
async def test_out_of_range_numbers_are_a_400_with_the_dropped_reason(picker, channel, path, fields, param):  # noqa: F811
    s = EnvoyStream(channel).open()
    s.request_headers(path=path)
    s.request_body(json.dumps({"model": "base", **fields}).encode(), True)
    status, err, headers = await _rejected(s)
    await s.close()
    assert status == 400
    assert err["error"]["type"] == "BadRequestError" and err["error"]["param"] == param
    assert headers[DROPPED] == Dropped.BAD_REQUEST
    assert not picker.sink.assigned  # nothing reached the peers


def test_in_range_numbers_still_parse():
    req = parse_request(b'{"model":"m","prompt":[0,5,2147483647],"max_tokens":2147483647}', "/v1/completions")
    assert req.prompt_tokens == 3 and req.max_tokens == 2**31 - 1


# -- finding 3: deep nesting is a 400, not a RecursionError / 500 -------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", b'{"model":"base","prompt":"x","extra":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        ("/v1/completions", b'{"model":"base","prompt":' + b"[" * 50_000 + b"}"),
        ("/v1/chat/completions", b'{"model":"base","messages":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        ("/v1/chat/completions", b"[" * 50_000),
        (
            "/v1/completions",
            b'{"model":"base","prompt":"x","stream_options":' + b'{"a":' * 25_000 + b"}" * 25_000 + b"}",
        ),
    ],
)
async def test_deeply_nested_json_is_a_400(picker, channel, path, body):  # noqa: F811
    with pytest.raises(BodyError) as info:
        parse_request(body, path)
    assert info.value.status == 400
    s = EnvoyStream(channel).open()
    s.request_headers(path=path)
    s.request_body(body, True)
    status, err, headers = await _rejected(s)
    await s.close()
    assert status == 400 and err["error"]["type"] == "BadRequestError"
    assert headers[DROPPED] == Dropped.BAD_REQUEST


# -- finding 4: an empty POST body is answered by the picker -----------------------------------


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/chat/completions?x=1"])
async def test_empty_post_body_on_an_inference_path_is_a_400_from_the_picker(picker, channel, path):  # noqa: F811
    s = EnvoyStream(channel).open()
    s.request_headers(path=path, method="POST", headers={"content-length": "0"}, end_of_stream=True)
    status, err, headers = await _rejected(s)
    await s.close()
    assert status == 400 and "empty" in err["error"]["message"]
    assert headers[DROPPED] == Dropped.BAD_REQUEST
    assert not picker.sink.assigned


async def test_a_get_without_a_body_is_still_routed(picker, channel):  # noqa: F811
    s = EnvoyStream(channel).open()
    s.request_headers(path="/health", method="GET", end_of_stream=True)
    r = await s.recv()
    await s.close()
    assert r.WhichOneof("response") == "request_headers"


# -- finding 2: client model names cannot blow up /metrics --------------------------------------


def _sheddable_director(metrics: PickerMetrics) -> Director:
    profile = least_load_profile(staleness=3600)
    view = PoolView("default", "pool", profile.state)
    view.apply(snapshot("10.0.0.1:8000", pool="pool"))
    return Director(
        view=view,
        admission=profile.admission,
        scheduler=profile.scheduler,
        models=ModelTable([], "pool", "sheddable"),  # every model name passes: the worst case
        metrics=metrics,
    )


def test_a_flood_of_client_model_names_keeps_metrics_bounded():
    metrics = PickerMetrics()
    director = _sheddable_director(metrics)
    rng = random.Random(19)

    def flood(n: int, length: int) -> None:
        for i in range(n):
            name = "".join(rng.choices(string.ascii_letters, k=length))
            body = json.dumps({"model": name, "prompt": "hello", "max_tokens": 4}).encode()
            r = director.route(RequestHeaders(path="/v1/completions", request_id=f"{length}-{i}"), body, None)
            assert isinstance(r, Routed)
            director.complete(r.inflight, 200, 3, 4)
            bad = director.route(RequestHeaders(path="/v1/chat/completions", request_id=f"e{i}"), body, None)
            assert isinstance(bad, Rejected)  # an error series per name too

    flood(2_000, 1024)  # 2,000 random 1 KB names: none is a label value
    page = generate_latest(metrics.registry)
    assert len(page) < 200_000, len(page)  # every 1 KB name folds into "other"
    assert max(len(line) for line in page.splitlines()) < 1_000
    series_after_long = page.count(b"\n")
    flood(LABEL_LIMIT + 100, 20)  # short names: at most LABEL_LIMIT become label values
    page = generate_latest(metrics.registry)
    flood(300, 20)  # more of the same: the page does not grow any more
    again = generate_latest(metrics.registry)
    assert again.count(b"\n") == page.count(b"\n")
    per_name = (page.count(b"\n") - series_after_long) / LABEL_LIMIT
    assert per_name < 500  # a bounded number of series per name, and only LABEL_LIMIT names
