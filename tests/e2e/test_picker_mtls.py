"""Mutual TLS between Envoy and the picker, through the real Envoy and the generated bootstrap.

The picker serves ext_proc over TLS (``--secure-serving``) and requires a client certificate
signed by its ``--client-ca-file``. Envoy configured with a certificate from that CA routes
requests; an Envoy with a certificate from another CA gets no answer from the picker (its
requests fail closed), and a gRPC client without a certificate is refused in the handshake.
"""

from __future__ import annotations

import json

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from picker.service import Picker
from tests.support.certs import TestCA
from tests.support.least_load import least_load_profile
from tests.support.pickers import loopback_config
from tests.support.snapshots import snapshot

pytestmark = pytest.mark.e2e


async def _model_server():
    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return web.json_response({"model": body["model"], "choices": [{"text": "ok"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}"


def _envoy(picker: Picker, ca: TestCA, client) -> EnvoyProcess:
    opts = BootstrapOptions(
        pickers=(picker.address,),
        listen_address="127.0.0.1",
        listen_port=0,  # Envoy binds free ports; EnvoyProcess reads them back
        admin_port=0,
        picker_tls=True,
        picker_ca_file=str(ca.cert),
        picker_client_cert_file=str(client.cert),
        picker_client_key_file=str(client.key),
        picker_sni="localhost",
        health_check_interval_s=0.5,
    )
    return EnvoyProcess(build_bootstrap(opts))


async def _post(http: aiohttp.ClientSession, envoy: EnvoyProcess) -> int:
    port = envoy.port
    body = {"model": "base", "prompt": "hello"}
    async with http.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as r:
        return r.status


async def _grpc_health(picker: Picker, ca: TestCA, client=None) -> int:
    key = client.key.read_bytes() if client else None
    chain = client.cert.read_bytes() if client else None
    creds = grpc.ssl_channel_credentials(ca.cert.read_bytes(), key, chain)
    options = [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(picker.address, creds, options=options) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        return resp.status


async def test_envoy_with_the_right_client_certificate_routes_and_others_are_refused(tmp_path, envoy_binary):
    ca, rogue = TestCA(tmp_path / "ca"), TestCA(tmp_path / "rogue", name="rogue-ca")
    server, envoy_cert, rogue_cert = ca.issue("localhost"), ca.issue("envoy"), rogue.issue("envoy")
    runner, pod = await _model_server()
    cfg = loopback_config(
        secure_serving=True,
        cert_file=str(server.cert),
        key_file=str(server.key),
        client_ca_file=str(ca.cert),
        unknown_model_policy="route",
    )
    picker = Picker(cfg, profile=least_load_profile(staleness=3600))
    try:
        async with picker, aiohttp.ClientSession() as http:
            picker.view.apply(snapshot(pod, pool="pool"))
            await picker.wait_ready(10)
            # A gRPC client with the CA's certificate gets through; without one it is refused.
            assert await _grpc_health(picker, ca, envoy_cert) == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _grpc_health(picker, ca)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError):
                await _grpc_health(picker, ca, rogue_cert)
            async with _envoy(picker, ca, envoy_cert) as good:
                assert await _post(http, good) == 200
            streams = picker.servicer.streams
            async with _envoy(picker, ca, rogue_cert) as bad:
                status = await _post(http, bad)
                assert status >= 500, status  # FailClose: no picker answer, no routing
            assert picker.servicer.streams == streams  # the rogue Envoy never opened a stream
    finally:
        await runner.cleanup()


def test_half_configured_mutual_tls_is_refused_at_start():
    from picker.config import PickerConfig

    with pytest.raises(ValueError, match="needs --secure-serving"):
        PickerConfig(client_ca_file="ca.crt")
    with pytest.raises(ValueError, match="both the certificate and the key"):
        BootstrapOptions(picker_tls=True, picker_client_cert_file="c.crt")
    with pytest.raises(ValueError, match="need picker_tls"):
        BootstrapOptions(picker_ca_file="ca.crt")
