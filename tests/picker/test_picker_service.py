"""The picker as a service: config sources, TLS, graceful stop, metrics, and the CLI in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from dataclasses import replace

import aiohttp
import grpc
import nats
import pytest

from picker.__main__ import build_parser, config_from_args
from picker.config import PickerConfig
from picker.envoy_client import EnvoyStream, headers_of
from picker.service import Picker
from shared.natsconn import ensure_streams
from shared.portfile import read_port_file
from shared.schemas import encode
from shared.subjects import Subjects
from tests.support.least_load import least_load_profile
from tests.support.pickers import loopback_config
from tests.support.snapshots import snapshot
from tests.support.waiting import wait_until

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
  targetModels: [{name: %s}]
"""


def body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


def local_cfg(**kw) -> PickerConfig:
    return loopback_config(**{"config_poll_interval": 0.05, **kw})


async def route(p: Picker, model: str, channel: grpc.aio.Channel) -> tuple[int, bytes]:
    s = EnvoyStream(channel).open()
    s.request_headers()
    s.request_body(body(model), True)
    r = await s.recv()
    if r.WhichOneof("response") == "immediate_response":
        await s.close()
        return r.immediate_response.status.code, r.immediate_response.body
    data = (await s.recv()).request_body.response.body_mutation.streamed_response.body
    s.response_headers()
    await s.recv()
    s.response_body(b"{}", True)
    await s.recv()
    await s.close()
    return 200, data


async def test_file_config_reloads_and_a_broken_file_keeps_the_last_one(tmp_path):
    f = tmp_path / "models.yaml"
    f.write_text(MODELS % "v1")
    p = Picker(local_cfg(config_files=[str(f)], unknown_model_policy="reject"), profile=least_load_profile())
    async with p:
        p.view.apply(snapshot("10.0.0.1:8000", pool="pool"))
        await p.wait_ready(5)
        async with grpc.aio.insecure_channel(p.address) as ch:
            assert json.loads((await route(p, "chat", ch))[1])["model"] == "v1"
            f.write_text(MODELS % "v2")
            os.utime(f, ns=(1, 10**18))  # a distinct mtime even on coarse clocks
            await wait_until(lambda: p.source.reloads >= 2, 5, "reload")
            assert json.loads((await route(p, "chat", ch))[1])["model"] == "v2"
            f.write_text(
                "kind: InferenceModel\napiVersion: inference.networking.x-k8s.io/v1alpha2\n"
                "metadata: {name: x}\nspec: {modelName: 5}\n"
            )
            os.utime(f, ns=(1, 2 * 10**18))
            await wait_until(lambda: p.source.errors >= 1, 5, "error noticed")
            assert json.loads((await route(p, "chat", ch))[1])["model"] == "v2"
            assert (await route(p, "unknown", ch))[0] == 404


async def test_kubernetes_source(kube_api):
    await kube_api.upsert(
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
            "kind": "InferenceModel",
            "metadata": {"name": "chat", "namespace": "default"},
            "spec": {"modelName": "chat", "poolRef": {"name": "pool"}, "targetModels": [{"name": "lora-a"}]},
        }
    )
    p = Picker(local_cfg(kube_host=kube_api.url, unknown_model_policy="reject"), profile=least_load_profile())
    assert not p.is_ready()
    async with p:
        p.view.apply(snapshot("10.0.0.1:8000", pool="pool"))
        await p.wait_ready(10)
        async with grpc.aio.insecure_channel(p.address) as ch:
            assert json.loads((await route(p, "chat", ch))[1])["model"] == "lora-a"
            await kube_api.upsert(
                {
                    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
                    "kind": "InferenceModel",
                    "metadata": {"name": "other", "namespace": "default"},
                    "spec": {"modelName": "other", "poolRef": {"name": "pool"}},
                }
            )
            await wait_until(lambda: "other" in p.director.models.by_model, 10, "watch event")
            assert (await route(p, "other", ch))[0] == 200


async def test_tls_with_a_self_signed_certificate():
    p = Picker(local_cfg(secure_serving=True), profile=least_load_profile())
    async with p:
        p.view.apply(snapshot("10.0.0.1:8000", pool="pool"))
        creds = grpc.ssl_channel_credentials(root_certificates=p.certificate)
        opts = [("grpc.ssl_target_name_override", "localhost")]
        async with grpc.aio.secure_channel(f"localhost:{p.grpc_port}", creds, options=opts) as ch:
            assert (await route(p, "base", ch))[0] == 200


async def test_graceful_stop_lets_in_flight_streams_finish():
    p = Picker(local_cfg(), profile=least_load_profile())
    await p.start()
    p.view.apply(snapshot("10.0.0.1:8000", pool="pool"))
    async with grpc.aio.insecure_channel(p.address) as ch:
        s = EnvoyStream(ch).open()
        s.request_headers(headers={"x-request-id": "late"})
        s.request_body(body("base"), True)
        await s.recv_n(2)
        stopping = asyncio.create_task(p.stop(grace=5))
        await wait_until(lambda: not p.is_ready(), 2)
        s.response_headers()
        await s.recv()  # the in-flight stream is still served
        s.response_body(b"{}", True)
        await s.recv()
        await s.close()
        await asyncio.wait_for(stopping, 10)
    assert not p.director.inflight


async def test_metrics_use_upstream_names():
    p = Picker(local_cfg(), profile=least_load_profile())
    async with p:
        p.view.apply(snapshot("10.0.0.1:8000", pool="pool", kv_usage=0.5, waiting=4))
        async with grpc.aio.insecure_channel(p.address) as ch:
            await route(p, "base", ch)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as r:
                text = await r.text()
            async with http.get(f"http://127.0.0.1:{p.metrics_port}/readyz") as r:
                assert r.status == 200
    for name in (
        'inference_model_request_total{model_name="base",target_model_name="base"} 1.0',
        "inference_model_request_duration_seconds_bucket",
        "inference_model_input_tokens_bucket",
        'inference_model_running_requests{model_name="base"} 0.0',
        'inference_pool_average_kv_cache_utilization{name="pool"} 0.5',
        'inference_pool_average_queue_size{name="pool"} 4.0',
        'inference_pool_ready_pods{name="pool"} 1.0',
        "inference_extension_scheduler_e2e_duration_seconds_count 1.0",
        "infergate_picker_view_max_age_seconds",
    ):
        assert name in text, name


def test_flags_and_environment(monkeypatch):
    monkeypatch.setenv("INFERGATE_POOL_NAME", "from-env")
    monkeypatch.setenv("INFERGATE_UNKNOWN_MODEL_POLICY", "reject")
    cfg = config_from_args(
        build_parser().parse_args(["--grpc-port", "9100", "--cert-path", "/c", "--no-nats"])
    )
    assert (cfg.pool_name, cfg.grpc_port, cfg.unknown_model_policy) == ("from-env", 9100, "reject")
    assert (cfg.cert_file, cfg.key_file, cfg.nats) == ("/c/tls.crt", "/c/tls.key", None)
    defaults = config_from_args(build_parser().parse_args([]))
    assert (defaults.grpc_port, defaults.grpc_health_port, defaults.metrics_port) == (9002, 9003, 9090)


def test_every_setting_has_one_flag_and_the_same_default(monkeypatch):
    """The flags come from PickerConfig's fields: no flag and no default can drift apart."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = config_from_args(build_parser().parse_args(["--no-nats"]))
    assert replace(cfg, replica_name="r", sharing=None) == PickerConfig(replica_name="r")
    env = build_parser().env_vars()
    assert env["cert_path"] == "INFERGATE_CERT_PATH" and env["nats"] == "INFERGATE_NATS"


@pytest.mark.slow
async def test_cli_subprocess_serves_and_exits_on_sigterm(nats_server, tmp_path):
    subj = Subjects("infergate")
    nc = await nats.connect(nats_server.url)
    await ensure_streams(nc.jetstream(), subj)
    await nc.publish(
        subj.endpoint("default", "pool", "pod-a", 8000), encode(snapshot("10.1.1.1:8000", pool="pool"))
    )
    await nc.flush()
    await nc.close()
    f = tmp_path / "models.yaml"
    f.write_text(textwrap.dedent(MODELS % "tgt"))
    port_file = tmp_path / "ports.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "picker",
        "--pool-name",
        "pool",
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--grpc-health-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--port-file",
        str(port_file),
        "--config-files",
        str(f),
        "--nats-url",
        nats_server.url,
        "--log-format",
        "text",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ports = await read_port_file(port_file, 30, alive=lambda: proc.returncode is None)
        assert len({ports["grpc"], ports["health"], ports["metrics"]}) == 3 and 0 not in ports.values()
        grpc_port, metrics_port = ports["grpc"], ports["metrics"]
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{metrics_port}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            for _ in range(300):
                if await ready():
                    break
                await asyncio.sleep(0.05)
            assert await ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            s = EnvoyStream(ch).open()
            s.request_headers()
            s.request_body(body("chat"), True)
            r = await s.recv(10)
            assert headers_of(r.request_headers.response.header_mutation)[
                "x-gateway-destination-endpoint"
            ] == ("10.1.1.1:8000")
            await s.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_with_the_real_default_scheduler():
    # picker.scheduling.build_profile("default"); unknown models Sheddable (not the default)
    p = Picker(local_cfg(unknown_model_policy="sheddable"))
    assert type(p.scheduler).__name__ != "LeastLoadScheduler"
    p.director.conformance_hooks = True  # the test pins requests with test-epp-endpoint-selection
    async with p:
        for i in range(1, 4):
            p.view.apply(snapshot(f"10.0.0.{i}:8000", pool="pool", kv_capacity_tokens=119_408))
        async with grpc.aio.insecure_channel(p.address) as ch:
            for _ in range(5):
                s = EnvoyStream(ch).open()
                s.request_headers(headers={"test-epp-endpoint-selection": "10.0.0.2,10.0.0.3"})
                s.request_body(body("base"), True)
                r = await s.recv()
                first = headers_of(r.request_headers.response.header_mutation)[
                    "x-gateway-destination-endpoint"
                ]
                assert set(first.split(",")) <= {"10.0.0.2:8000", "10.0.0.3:8000"}
                await s.close()
            # Every pod saturated: a Sheddable request (an unknown model, policy sheddable) is shed.
            for i in range(1, 4):
                p.view.apply(snapshot(f"10.0.0.{i}:8000", pool="pool", seq=2, waiting=50, kv_usage=0.99))
            status, _ = await route(p, "unknown-model", ch)
            assert status == 429
        await wait_until(lambda: not p.director.inflight, 5)


def test_kube_mode_is_automatic_inside_a_cluster(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not config_from_args(build_parser().parse_args([])).kube
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert config_from_args(build_parser().parse_args([])).kube
    assert not config_from_args(build_parser().parse_args(["--config-files", "x.yaml"])).kube
    assert not config_from_args(build_parser().parse_args(["--no-kube"])).kube
