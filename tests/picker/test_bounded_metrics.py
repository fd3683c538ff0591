"""Issue #19 item 2: whatever clients send, the picker's /metrics page stays bounded.

Through the real picker (ext_proc over gRPC, the test playing Envoy) and its real HTTP
/metrics page: a flood of distinct model names, 100 KB names and rewrite headers, then
of fairness ids. The bounds are derived from the caps (label values and the measured
cost of one label set), never from timing.
"""

from __future__ import annotations

import asyncio
import json
import random
import string

import aiohttp
import grpc
import pytest

from picker.envoy_client import EnvoyStream
from picker.ids import MAX_REQUEST_ID, bounded_request_id
from picker.metrics import FAIRNESS_ADMIT, LABEL_MAX_LEN, OTHER
from picker.service import Picker
from shared.schemas import LoraState
from tests.support.least_load import least_load_profile
from tests.support.pickers import loopback_config, standard_models
from tests.support.snapshots import snapshot

FAMILY = b"llm_d_epp_request_total{"


@pytest.fixture
async def picker():
    p = Picker(loopback_config(max_body_bytes=400_000), profile=least_load_profile(staleness=3600))
    p._set_models(standard_models(policy="route"))  # unknown names are routed: the worst case
    await p.start()
    p.view.apply(snapshot("10.0.0.1:8000", pool="pool", lora=LoraState(running=["adapter-a"])))
    p.view.apply(snapshot("10.0.0.2:8000", pool="pool"))
    try:
        yield p
    finally:
        await p.stop(grace=0.5)


async def _request(ch: grpc.aio.Channel, model: str, headers: dict[str, str], status: int = 200) -> None:
    s = EnvoyStream(ch, "BUFFERED").open()
    s.request_headers("/v1/completions", headers=headers)
    await s.recv()
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 4}).encode()
    s.request_body(body, True)
    await s.recv()
    s.response_headers(status=status)
    await s.recv()
    s.response_body(b'{"usage":{"prompt_tokens":3,"completion_tokens":4}}', True)
    await s.recv()
    await s.close()


async def _flood(ch: grpc.aio.Channel, requests: list[tuple[str, dict[str, str]]]) -> None:
    for i in range(0, len(requests), 50):
        await asyncio.gather(
            *(_request(ch, m, h, 200 if j % 4 else 503) for j, (m, h) in enumerate(requests[i : i + 50]))
        )


async def _page(p: Picker) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as r:
        assert r.status == 200
        return await r.read()


def _values(page: bytes, label: str) -> set[str]:
    out = set()
    for line in page.splitlines():
        if line.startswith(FAMILY):
            for part in line[len(FAMILY) : line.index(b"}")].decode().split('",'):
                k, _, v = part.partition('="')
                if k == label:
                    out.add(v.rstrip('"'))
    return out


def _names(rng: random.Random, n: int, length: int) -> list[str]:
    return ["".join(rng.choices(string.ascii_letters, k=length)) for _ in range(n)]


async def test_model_name_flood_keeps_the_page_to_the_configured_label_sets(picker):
    rng = random.Random(19)
    async with grpc.aio.insecure_channel(picker.address) as ch:
        empty = len(await _page(picker))
        await _request(ch, "base", {"x-request-id": "one"})
        one = len(await _page(picker))
        per_set = one - empty  # one label set of the request families (~400 lines)
        assert per_set > 10_000
        await _request(ch, "adapter-a", {"x-request-id": "served"})  # served by a pod: its own label
        await _request(ch, "chat", {"x-request-id": "rewritten"})  # configured, rewritten to base-v2
        flood = [(name, {"x-request-id": f"s{i}"}) for i, name in enumerate(_names(rng, 500, 12))]
        flood += [(name, {"x-request-id": f"l{i}"}) for i, name in enumerate(_names(rng, 3, 100_000))]
        flood += [("base", {"x-gateway-model-name-rewrite": n}) for n in _names(rng, 100, 16)]
        await _flood(ch, flood)
        page = await _page(picker)

        # Configured and served names label as themselves (cheap: configured, not requested).
        models = _values(page, "model_name") | _values(page, "target_model_name")
        assert models == {"base", "adapter-a", "chat", "base-v2", OTHER}
        # label sets: the four real (model, target) pairs, (junk, junk) and (base, junk) -> other;
        # every set with its 200s and its 503s (the error family is a counter, a few lines).
        sets = page.count(FAMILY)
        assert sets <= 6
        assert len(page) < empty + (sets + 1) * per_set, (len(page), per_set)
        assert max(len(line) for line in page.splitlines()) < 4 * LABEL_MAX_LEN + 200
        # More junk changes counts, never the page's shape.
        await _flood(ch, [(name, {}) for name in _names(rng, 100, 12)])
        again = await _page(picker)
        assert again.count(b"\n") == page.count(b"\n")
        assert b'infergate_picker_metric_label_values{label="model_name"} 6.0' in again
        overflow = [
            ln for ln in again.splitlines() if ln.startswith(b"infergate_picker_metric_label_overflow")
        ]
        assert any(b'label="model_name"' in ln and float(ln.split()[-1]) >= 700 for ln in overflow)
        for table in (b"inflight_requests", b"prefix_hashes", b"label_sets", b"open_requests"):
            assert b'infergate_picker_table_entries{table="' + table + b'"}' in again


async def test_fairness_id_flood_admits_a_bounded_number_of_tenants(picker):
    rng = random.Random(7)
    async with grpc.aio.insecure_channel(picker.address) as ch:
        ids = _names(rng, FAIRNESS_ADMIT + 50, 10) + _names(rng, 2, 50_000)
        await _flood(ch, [("base", {"x-llm-d-inference-fairness-id": f}) for f in ids])
        page = await _page(picker)
        tenants = _values(page, "fairness_id")
        assert len(tenants) == FAIRNESS_ADMIT + 1 and OTHER in tenants
        assert page.count(FAMILY) == FAIRNESS_ADMIT + 1
        await _flood(ch, [("base", {"x-llm-d-inference-fairness-id": f}) for f in _names(rng, 50, 10)])
        assert (await _page(picker)).count(b"\n") == page.count(b"\n")


async def test_a_huge_request_id_is_kept_as_a_bounded_digest(picker):
    rid = "r" * 8_192  # Envoy passes header values of tens of KB
    async with grpc.aio.insecure_channel(picker.address) as ch:
        s = EnvoyStream(ch, "BUFFERED").open()
        s.request_headers("/v1/completions", headers={"x-request-id": rid})
        await s.recv()
        s.request_body(json.dumps({"model": "base", "prompt": "hi", "max_tokens": 4}).encode(), True)
        await s.recv()
        (kept,) = picker.director.inflight  # what the tables and the shared events key it by
        assert len(kept) <= MAX_REQUEST_ID and kept == bounded_request_id(rid)
        assert len(picker.state.inflight) == 1
        s.response_headers()
        await s.recv()
        s.response_body(b'{"usage":{"prompt_tokens":3,"completion_tokens":4}}', True)
        await s.recv()
        await s.close()
    assert not picker.director.inflight and len(picker.state.inflight) == 0  # the completion matched
