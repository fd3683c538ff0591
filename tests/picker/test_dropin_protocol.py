"""Today's Endpoint Picker contract (issue #14), through a real gRPC channel with the test playing Envoy.

Both header families, the single-address destination header with the list in the
``envoy.lb`` metadata, rejections naming their reason, the picker's own ``/v1/models``,
conformance hooks only when asked, grpc.health.v1 on the ext_proc port, and bounded
metric labels.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.envoy_client import EnvoyStream, headers_of
from picker.metrics import OTHER, LabelCap, PickerMetrics
from picker.protocol import (
    CONFORMANCE_SELECTION,
    CONFORMANCE_SERVED,
    CONFORMANCE_SERVED_MISSING,
    DESTINATION,
    DESTINATION_SERVED,
    DROPPED_REASON,
    HEALTH_SERVICES,
    LB_NAMESPACE,
)
from picker.service import Picker
from shared.schemas import LoraState
from tests.support.least_load import least_load_profile
from tests.support.pickers import loopback_config, standard_models
from tests.support.snapshots import snapshot

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


class InfoSink:
    """Keeps the RequestInfo of every assignment (what the scheduler and flow control see)."""

    def __init__(self) -> None:
        self.infos = []

    def on_local_assignment(self, request, address, now):
        self.infos.append((request, address))

    def on_local_completion(self, *args):
        pass


def make_picker(**cfg_kw) -> Picker:
    cfg = loopback_config(
        **cfg_kw,
    )
    p = Picker(cfg, profile=least_load_profile(staleness=3600), sink=InfoSink())
    p._set_models(standard_models())
    return p


@pytest.fixture
async def picker():
    p = make_picker()
    await p.start()
    p.view.apply(snapshot(A, pool="pool", served_models=["base", "chat-lora"]))
    p.view.apply(snapshot(B, pool="pool", waiting=2))
    try:
        yield p
    finally:
        await p.stop(grace=0.5)


@pytest.fixture
async def channel(picker):
    async with grpc.aio.insecure_channel(picker.address) as ch:
        yield ch


def chat(model: str = "base") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]}).encode()


async def routed(channel, headers: dict[str, str], body: bytes | None = None, **kw):
    """Send one request; return (headers set on it, its envoy.lb list, the body Envoy forwards)."""
    s = EnvoyStream(channel).open()
    s.request_headers(headers=headers, **kw)
    s.request_body(body or chat(), True)
    r = await s.recv()
    assert r.WhichOneof("response") == "request_headers", r
    h = headers_of(r.request_headers.response.header_mutation)
    lb = r.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields[DESTINATION].string_value
    sent = (await s.recv()).request_body.response.body_mutation.streamed_response.body
    await s.close()
    return h, lb, sent


async def rejected(channel, headers: dict[str, str] | None = None, body: bytes | None = None, **kw):
    s = EnvoyStream(channel).open()
    s.request_headers(headers=headers or {}, **kw)
    s.request_body(chat() if body is None else body, True)
    r = await s.recv()
    assert r.WhichOneof("response") == "immediate_response", r
    im = r.immediate_response
    await s.close()
    return im.status.code, {h.header.key: h.header.raw_value.decode() for h in im.headers.set_headers}


# -- destination -----------------------------------------------------------------------------


async def test_header_names_the_choice_and_metadata_the_ordered_list(picker, channel):
    h, lb, _ = await routed(channel, {})
    assert h[DESTINATION] == A
    assert lb == f"{A},{B}"


async def test_destination_header_list_flag_puts_the_list_in_the_header(picker, channel):
    picker.director.destination_header_list = True  # --destination-header-list
    h, lb, _ = await routed(channel, {})
    assert h[DESTINATION] == lb == f"{A},{B}"


# -- both header families --------------------------------------------------------------------


@pytest.mark.parametrize("family", ["x-gateway", "x-llm-d"])
async def test_objective_and_fairness_id_from_either_family(picker, channel, family):
    await routed(
        channel,
        {f"{family}-inference-objective": "cheap", f"{family}-inference-fairness-id": "tenant-a"},
    )
    info, _ = picker.sink.infos[-1]
    assert (info.criticality, info.fairness_id) == ("Sheddable", "tenant-a")
    assert info.priority < 0


@pytest.mark.parametrize("family", ["x-gateway", "x-llm-d"])
async def test_model_rewrite_from_either_family(picker, channel, family):
    _, _, sent = await routed(channel, {f"{family}-model-name-rewrite": "base-lora-7"})
    assert json.loads(sent)["model"] == "base-lora-7"
    assert picker.sink.infos[-1][0].target_model == "base-lora-7"


async def test_llm_d_name_wins_when_a_request_carries_both(picker, channel):
    # Whatever the order on the wire, as llm-d-router reads its own names first.
    for order in (1, -1):
        pairs = [
            ("x-gateway-inference-objective", "chat"),
            ("x-llm-d-inference-objective", "cheap"),
            ("x-gateway-inference-fairness-id", "old"),
            ("x-llm-d-inference-fairness-id", "new"),
            ("x-gateway-model-name-rewrite", "old-target"),
            ("x-llm-d-model-name-rewrite", "new-target"),
        ][::order]
        _, _, sent = await routed(channel, dict(pairs))
        info, _ = picker.sink.infos[-1]
        assert (info.criticality, info.fairness_id, json.loads(sent)["model"]) == (
            "Sheddable",
            "new",
            "new-target",
        )


async def test_no_fairness_id_is_the_default_flow_in_llm_d_metrics(picker, channel):
    await routed(channel, {})
    assert picker.sink.infos[-1][0].fairness_id == ""
    labels = {
        "model_name": "base",
        "target_model_name": "base",
        "fairness_id": "default-flow",
        "priority": "0",
    }
    assert picker.registry.get_sample_value("llm_d_epp_request_total", labels) == 1


# -- rejections name their reason -------------------------------------------------------------


async def test_every_rejection_carries_the_dropped_reason(picker, channel):
    status, h = await rejected(channel, body=b"{oops")
    assert (status, h[DROPPED_REASON]) == (400, "rejected-bad-request")
    status, h = await rejected(channel, body=chat("nope"))
    assert (status, h[DROPPED_REASON]) == (404, "rejected-unknown-model")
    status, h = await rejected(channel, subset=[])  # the gateway allows no endpoint
    assert (status, h[DROPPED_REASON]) == (503, "rejected-no-endpoints")
    for address in (A, B):
        picker.view.apply(snapshot(address, pool="pool", waiting=9, seq=2))
    status, h = await rejected(channel, body=chat("cheap"))  # Sheddable, every pod saturated
    assert (status, h[DROPPED_REASON]) == (429, "rejected-saturated")
    picker.view.bootstrapped = False
    status, h = await rejected(channel)
    assert (status, h[DROPPED_REASON]) == (503, "rejected-not-ready")
    shed = [
        s.labels
        for fam in picker.registry.collect()
        for s in fam.samples
        if s.name == "llm_d_epp_request_error_total" and s.labels["error_code"] == "429"
    ]
    assert len(shed) == 1 and int(shed[0]["priority"]) < 0
    assert (shed[0]["model_name"], shed[0]["fairness_id"]) == ("cheap", "default-flow")


# -- the gateway's own GET /v1/models ---------------------------------------------------------


async def models(channel, path: str = "/v1/models") -> tuple[int, dict]:
    s = EnvoyStream(channel).open()
    s.request_headers(path=path, method="GET", end_of_stream=True)
    r = await s.recv()
    await s.close()
    assert r.WhichOneof("response") == "immediate_response", r
    return r.immediate_response.status.code, json.loads(r.immediate_response.body)


async def test_models_list_from_the_view_in_a_stable_order(picker, channel):
    picker.view.apply(
        snapshot("10.0.0.3:8000", pool="pool", model="other-base", lora=LoraState(running=["sql"]))
    )
    # A pod that is not ready serves nothing to the list.
    picker.view.apply(snapshot("10.0.0.4:8000", pool="pool", ready=False, served_models=["hidden"]))
    status, body = await models(channel)
    assert status == 200 and body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    # client-facing names, then base models, then adapters; each sorted, each once
    assert ids == ["base", "chat", "cheap", "other-base", "chat-lora", "sql"]
    assert all(m["object"] == "model" for m in body["data"])
    assert {m["id"]: m.get("parent") for m in body["data"]}["sql"] == "other-base"
    for _ in range(3):
        assert await models(channel, "/v1/models?x=1") == (status, body)
    assert not picker.sink.infos  # no routing, no accounting


async def test_models_list_not_ready_is_503(picker, channel):
    picker.view.bootstrapped = False
    status, body = await models(channel)
    assert status == 503 and body["error"]["code"] == 503


# -- conformance hooks, only with the flag -----------------------------------------------------


async def response_headers(channel, selection: str, served: str | None, served_header: str | None):
    s = EnvoyStream(channel).open()
    s.request_headers(headers={CONFORMANCE_SELECTION: selection})
    s.request_body(chat(), True)
    r = await s.recv()
    chosen = headers_of(r.request_headers.response.header_mutation)[DESTINATION]
    await s.recv()
    extra = {DESTINATION_SERVED: served_header} if served_header else {}
    s.response_headers(extra=extra, served=served)
    rh = await s.recv()
    await s.close()
    return chosen, headers_of(rh.response_headers.response.header_mutation)


async def test_conformance_hooks_off_by_default(picker, channel):
    chosen, out = await response_headers(channel, B, served=B, served_header=None)
    assert chosen == A  # the test header pins nothing
    assert CONFORMANCE_SERVED not in out


async def test_conformance_hooks_on_restrict_and_echo_the_gateway_served_endpoint(channel, picker):
    picker.director.conformance_hooks = True
    chosen, out = await response_headers(channel, B, served=B, served_header=None)
    assert chosen == B
    assert out[CONFORMANCE_SERVED] == B  # from the envoy.lb metadata
    _, out = await response_headers(channel, B, served=None, served_header=B)
    assert out[CONFORMANCE_SERVED] == B  # from the response header InferGate's Envoy adds
    _, out = await response_headers(channel, B, served=None, served_header=None)
    assert out[CONFORMANCE_SERVED] == CONFORMANCE_SERVED_MISSING  # never the picker's own choice


def test_cli_flags_and_environment(monkeypatch):
    from picker.__main__ import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--no-nats"]))
    assert (cfg.conformance_test_hooks, cfg.destination_header_list) == (False, False)
    cfg = config_from_args(
        build_parser().parse_args(["--no-nats", "--conformance-test-hooks", "--destination-header-list"])
    )
    assert (cfg.conformance_test_hooks, cfg.destination_header_list) == (True, True)
    monkeypatch.setenv("INFERGATE_CONFORMANCE_TEST_HOOKS", "true")
    assert config_from_args(build_parser().parse_args(["--no-nats"])).conformance_test_hooks


# -- grpc.health.v1 on the ext_proc port too ---------------------------------------------------


async def test_health_on_the_ext_proc_port_and_the_health_port(picker):
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    ports = (picker.grpc_port, picker.health_port)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as ext_proc,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as health,
    ):
        stubs = [health_pb2_grpc.HealthStub(ch) for ch in (ext_proc, health)]

        async def statuses() -> list[dict[str, int]]:
            return [
                {
                    svc: (await stub.Check(health_pb2.HealthCheckRequest(service=svc))).status
                    for svc in HEALTH_SERVICES
                }
                for stub in stubs
            ]

        await picker.wait_ready()
        want = dict.fromkeys(HEALTH_SERVICES, serving)
        assert await statuses() == [want, want]
        picker.view.bootstrapped = False
        want = {**dict.fromkeys(HEALTH_SERVICES, not_serving), "liveness": serving}
        for _ in range(250):
            if (got := await statuses()) == [want, want]:
                break
            await asyncio.sleep(0.02)
        assert got == [want, want]


async def test_health_over_tls_on_the_ext_proc_port():
    p = make_picker(secure_serving=True)
    await p.start()
    try:
        await p.wait_ready()
        creds = grpc.ssl_channel_credentials(root_certificates=p.certificate)
        options = (("grpc.ssl_target_name_override", "localhost"),)
        async with grpc.aio.secure_channel(p.address, creds, options=options) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor")
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await p.stop(grace=0.5)


# -- metric labels bounded ---------------------------------------------------------------------


def test_label_cap_keeps_known_names_and_folds_the_rest():
    cap = LabelCap(limit=3, max_len=10)
    cap.set_known(["chat"])  # known names count against the limit, never fold
    assert [cap(v) for v in ("a", "b", "c", "d", "a", "chat")] == ["a", "b", OTHER, OTHER, "a", "chat"]
    assert cap("x" * 11) == OTHER
    served = LabelCap(limit=5, admit=0, vouch=lambda v: v.startswith("s"))
    assert [served(v) for v in ("s1", "junk", "s2", "s1")] == ["s1", OTHER, "s2", "s1"]
    assert served.values == 3 and served.folded == 1


def test_request_metric_labels_are_bounded():
    m = PickerMetrics()
    m.set_known_models(["chat"])
    for i in range(1_500):
        m.assigned(m.labels(f"model-{i}", f"model-{i}", f"tenant-{i}", 0))
        m.error(f"bad-{i}", "", 400, f"tenant-x{i}")
    m.assigned(m.labels("chat", "chat", "t", 1))
    m.assigned(m.labels("m" * 500, "m" * 500, "t", 0))

    def values(metric: str, label: str) -> set[str]:
        return {s.labels[label] for fam in m.registry.collect() for s in fam.samples if s.name == metric}

    for metric in (
        "llm_d_epp_request_total",
        "inference_objective_request_total",
        "inference_model_request_total",
    ):
        models_seen = values(metric, "model_name")
        assert len(models_seen) <= 1_001 + 1 and OTHER in models_seen and "chat" in models_seen
        assert max(map(len, models_seen)) <= 128
    assert len(values("llm_d_epp_request_total", "fairness_id")) <= 1_001
    assert len(values("llm_d_epp_request_error_total", "model_name")) <= 1_001
    running = values("llm_d_epp_request_running", "fairness_id")
    assert len(running) <= 1_001


async def test_metrics_page_has_todays_names(picker, channel):
    await routed(channel, {"x-llm-d-inference-fairness-id": "tenant-a"})
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{picker.metrics_port}/metrics") as r,
    ):
        page = await r.text()
    for name in (
        'inference_model_request_total{model_name="base",target_model_name="base"} 1.0',
        'inference_objective_request_total{model_name="base",target_model_name="base"} 1.0',
        'llm_d_epp_request_total{fairness_id="tenant-a",model_name="base",'
        'priority="0",target_model_name="base"} 1.0',
        'inference_objective_running_requests{model_name="base"}',
        'inference_pool_per_pod_queue_size{model_server_pod="pod-10-0-0-2-8000",name="pool"} 2.0',
        f'llm_d_epp_per_endpoint_queue_size{{model_server_endpoint="{B}",name="pool"}} 2.0',
        'llm_d_epp_ready_endpoints{name="pool"} 2.0',
        'llm_d_epp_average_queue_size{name="pool"} 1.0',
        "llm_d_epp_scheduler_e2e_duration_seconds_count 1.0",
        "inference_extension_scheduler_e2e_duration_seconds_count 1.0",
    ):
        assert name in page, (name, [line for line in page.splitlines() if name.split("{")[0] in line])
