"""The autoscaler against a real nats-server, read over TLS by kubernetes-asyncio as the HPA would.

Snapshots and events are published exactly as the collectors and pickers publish them
(core publish onto the stream subjects); the API is read through ``ApiClient.call_api``
with the serving CA, and the HPA's own formula is applied to the served values.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from autoscaler.quantity import parse_quantity
from autoscaler.service import Autoscaler, AutoscalerConfig
from autoscaler.tls import issue, make_ca
from shared.natsconn import NatsOptions, connect, ensure_streams
from shared.portfile import read_port_file
from shared.schemas import Assignment, Completion, EndpointSnapshot, EventBatch, Tombstone, encode
from shared.subjects import Subjects

NS, POOL, MODEL = "team-a", "llama-pool", "llama-2-7b"
BASE = "/apis/external.metrics.k8s.io/v1beta1"
SUBJECTS = Subjects()


class Bus:
    """Publishes as a collector (snapshots) and a picker replica (event batches) do."""

    def __init__(self, nc) -> None:
        self.nc = nc
        self.seq = 0

    async def snapshot(
        self, pod: str, *, waiting: int = 0, kv: float = 0.0, ready: bool = True, ts=None
    ) -> None:
        self.seq += 1
        snap = EndpointSnapshot(
            namespace=NS,
            pool=POOL,
            pod=pod,
            address=f"{pod}:8000",
            model=MODEL,
            waiting=waiting,
            kv_usage=kv,
            ready=ready,
            ts=time.time() if ts is None else ts,
            seq=self.seq,
            epoch="test",
        )
        await self.nc.publish(SUBJECTS.endpoint(NS, POOL, pod, 8000), encode(snap))
        await self.nc.flush()

    async def tombstone(self, pod: str) -> None:
        self.seq += 1
        msg = Tombstone(namespace=NS, pool=POOL, pod=pod, address=f"{pod}:8000", ts=time.time(), seq=self.seq)
        await self.nc.publish(SUBJECTS.endpoint(NS, POOL, pod, 8000), encode(msg))
        await self.nc.flush()

    async def events(self, *events) -> None:
        batch = EventBatch(replica="picker-0", events=list(events), ts=time.time())
        await self.nc.publish(SUBJECTS.events(NS, POOL, "picker-0"), encode(batch))
        await self.nc.flush()


def assignment(rid: str, pod: str = "pod-0") -> Assignment:
    return Assignment(
        request_id=rid,
        replica="picker-0",
        address=f"{pod}:8000",
        model=MODEL,
        target_model=MODEL,
        ts=time.time(),  # namespace and pool left out: the autoscaler reads them from the subject
    )


def completion(rid: str, tokens: int = 50) -> Completion:
    return Completion(
        request_id=rid, replica="picker-0", address="pod-0:8000", output_tokens=tokens, ts=time.time()
    )


async def start_autoscaler(nats_url: str, **overrides) -> Autoscaler:
    cfg = AutoscalerConfig(
        nats=NatsOptions(servers=[nats_url]),
        secure_host="127.0.0.1",
        secure_port=0,
        ops_host="127.0.0.1",
        ops_port=0,
        **overrides,
    )
    scaler = Autoscaler(cfg)
    await scaler.start()
    return scaler


def kube_client(scaler: Autoscaler, cert: tuple[str, str] | None = None) -> client.ApiClient:
    conf = client.Configuration(host=f"https://127.0.0.1:{scaler.secure_port}", ssl_ca_cert=scaler.ca_file)
    if cert:
        conf.cert_file, conf.key_file = cert
    return client.ApiClient(conf)


async def get(api: client.ApiClient, path: str, selector: str | None = None, headers=None) -> dict:
    query = [("labelSelector", selector)] if selector is not None else []
    return await api.call_api(
        path,
        "GET",
        query_params=query,
        header_params={"Accept": "application/json", **(headers or {})},
        response_types_map={200: "object"},
        _return_http_data_only=True,
    )


async def metric_sum(
    api: client.ApiClient, metric: str, selector: str = f"model_name={MODEL}"
) -> float | None:
    """The sum of the served values, as the HPA computes it; None when no item is served."""
    body = await get(api, f"{BASE}/namespaces/{NS}/{metric}", selector)
    if not body["items"]:
        return None
    return sum(parse_quantity(i["value"]) for i in body["items"])


def hpa_desired(current: int, total: float, target_average: float, lo: int = 1, hi: int = 10) -> int:
    """The HPA's AverageValue rule: ratio = (total / current) / target, 10 % tolerance, clamped."""
    ratio = (total / current) / target_average
    if abs(ratio - 1.0) <= 0.1:
        return current
    return max(lo, min(hi, math.ceil(ratio * current)))


@pytest.fixture
async def bus(nats_server):
    nc = await connect(NatsOptions(servers=[nats_server.url]))
    await ensure_streams(nc.jetstream(), SUBJECTS)  # as the collectors and pickers do at start
    yield Bus(nc)
    await nc.close()


@pytest.fixture
async def scaler(nats_server, bus):
    s = await start_autoscaler(nats_server.url, staleness=5.0, window=10.0)
    yield s
    await s.stop()


async def test_discovery_documents_the_aggregator_needs(scaler):
    async with kube_client(scaler) as api:
        resources = await get(api, BASE)
        assert resources["kind"] == "APIResourceList"
        assert resources["groupVersion"] == "external.metrics.k8s.io/v1beta1"
        names = {r["name"] for r in resources["resources"]}
        assert "infergate-inflight-requests" in names and "infergate-kv-cache-usage" in names
        assert all(r["namespaced"] and r["verbs"] == ["get"] for r in resources["resources"])
        groups = await get(api, "/apis")
        assert groups["groups"][0]["preferredVersion"]["groupVersion"] == "external.metrics.k8s.io/v1beta1"
        assert (await get(api, "/apis/external.metrics.k8s.io"))["kind"] == "APIGroup"


async def test_value_follows_the_load_and_the_hpa_scales_up_then_down(scaler, bus):
    await bus.snapshot("pod-0", waiting=0, kv=0.1)
    async with kube_client(scaler) as api:
        await wait_until_value(api, "infergate-ready-replicas", 1)
        assert await metric_sum(api, "infergate-inflight-requests") == 0
        assert hpa_desired(1, 0, target_average=4) == 1

        await bus.events(*(assignment(f"r{i}") for i in range(20)))
        await bus.snapshot("pod-0", waiting=12, kv=0.9)
        await wait_until_value(api, "infergate-inflight-requests", 20)
        await wait_until_value(api, "infergate-waiting-requests", 12)
        assert await metric_sum(api, "infergate-kv-cache-usage") == pytest.approx(0.9)
        assert await metric_sum(api, "infergate-arrival-rate") == pytest.approx(20 / 10)
        up = hpa_desired(1, await metric_sum(api, "infergate-inflight-requests"), target_average=4)
        assert up == 5

        await bus.events(*(completion(f"r{i}", tokens=100) for i in range(18)))
        await bus.snapshot("pod-0", waiting=0, kv=0.2)
        await wait_until_value(api, "infergate-inflight-requests", 2)
        await wait_until_value(api, "infergate-waiting-requests", 0)
        assert await metric_sum(api, "infergate-output-tokens-per-second") == pytest.approx(1800 / 10)
        assert hpa_desired(up, await metric_sum(api, "infergate-inflight-requests"), target_average=4) == 1

        items = (await get(api, f"{BASE}/namespaces/{NS}/infergate-inflight-requests", f"pool={POOL}"))[
            "items"
        ]
        assert items[0]["metricLabels"] == {"pool": POOL, "target_model": MODEL, "model_name": MODEL}
        assert items[0]["timestamp"].endswith("Z") and "window" not in items[0]
        rates = await get(api, f"{BASE}/namespaces/{NS}/infergate-arrival-rate", f"model_name={MODEL}")
        assert rates["items"][0]["window"] == 10  # seconds, the span of the rate
        other_ns = await get(api, f"{BASE}/namespaces/elsewhere/infergate-inflight-requests")
        assert other_ns["items"] == []


async def wait_until_value(api, metric: str, expected: float, selector: str = f"model_name={MODEL}") -> None:
    seen: list = []

    async def poll() -> bool:
        seen.append(await metric_sum(api, metric, selector))
        return seen[-1] == pytest.approx(expected)

    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while not await poll():
        assert loop.time() < end, f"{metric} stayed at {seen[-1]}, expected {expected}"
        await asyncio.sleep(0.02)


async def test_unknown_metric_is_404_and_a_malformed_selector_400(scaler):
    async with kube_client(scaler) as api:
        with pytest.raises(ApiException) as err:
            await get(api, f"{BASE}/namespaces/{NS}/no-such-metric")
        assert err.value.status == 404
        assert '"kind":"Status"' in err.value.body.replace(" ", "") and "NotFound" in err.value.body
        with pytest.raises(ApiException) as err:
            await get(api, f"{BASE}/namespaces/{NS}/infergate-inflight-requests", "model_name in (a")
        assert err.value.status == 400 and "BadRequest" in err.value.body


async def test_stale_data_yields_no_value(nats_server, bus):
    scaler = await start_autoscaler(nats_server.url, staleness=3.0, window=1.0)
    try:
        async with kube_client(scaler) as api:
            await bus.snapshot("pod-old", waiting=7, ts=time.time() - 60)  # already stale when published
            await bus.snapshot("pod-0", waiting=3)  # fresh for 3 s, then never refreshed
            await wait_until_value(api, "infergate-waiting-requests", 3)

            async def empty() -> bool:
                return await metric_sum(api, "infergate-waiting-requests") is None

            await poll_until(empty, "the stale model's value to disappear")
    finally:
        await scaler.stop()


async def test_a_tombstoned_pod_stops_counting_at_once(nats_server, bus):
    scaler = await start_autoscaler(nats_server.url, staleness=120.0)  # staleness cannot explain the drop
    try:
        async with kube_client(scaler) as api:
            await bus.snapshot("pod-1", waiting=2)
            await bus.snapshot("pod-2", waiting=5)
            await wait_until_value(api, "infergate-waiting-requests", 7)
            await wait_until_value(api, "infergate-ready-replicas", 2)
            await bus.tombstone("pod-1")
            await wait_until_value(api, "infergate-waiting-requests", 5)
            assert await metric_sum(api, "infergate-ready-replicas") == 1
    finally:
        await scaler.stop()


async def poll_until(cond, what: str, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await cond():
        assert loop.time() < end, f"{what} not reached within {deadline}s"
        await asyncio.sleep(0.05)


async def test_a_restarted_autoscaler_bootstraps_from_jetstream(nats_server, bus):
    await bus.snapshot("pod-0", waiting=4)
    await bus.snapshot("pod-1", waiting=5)
    await bus.events(assignment("a"), assignment("b"), assignment("c"), completion("a"))
    scaler = await start_autoscaler(nats_server.url)
    try:
        async with kube_client(scaler) as api:
            await wait_until_value(api, "infergate-waiting-requests", 9)
            await wait_until_value(api, "infergate-inflight-requests", 2)
            await wait_until_value(api, "infergate-ready-replicas", 2)
    finally:
        await scaler.stop()


async def test_prometheus_export_on_the_ops_port(scaler, bus):
    await bus.snapshot("pod-0", waiting=6, kv=0.5)
    async with kube_client(scaler) as api:
        await wait_until_value(api, "infergate-waiting-requests", 6)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{scaler.ops.port}/metrics") as resp:
            text = await resp.text()
        async with http.get(f"http://127.0.0.1:{scaler.ops.port}/readyz") as resp:
            assert resp.status == 200
    line = f'infergate_autoscaler_waiting_requests{{model_name="{MODEL}",namespace="{NS}",pool="{POOL}"'
    assert line in text
    assert 'infergate_autoscaler_api_requests_total{code="200"}' in text


@pytest.fixture
def front_proxy(tmp_path: Path):
    """A request-header CA, the aggregator's client cert, a wrong-CN cert and a foreign CA's cert."""
    ca, foreign = make_ca("front-proxy-ca"), make_ca("someone-else")
    ca_file, _ = ca.write(tmp_path, "front-proxy-ca")
    return {
        "ca": ca_file,
        "ca_pem": ca.cert_pem.decode(),
        "good": issue(ca, "front-proxy-client", client=True).write(tmp_path, "good"),
        "wrong_cn": issue(ca, "mallory", client=True).write(tmp_path, "wrong-cn"),
        "foreign": issue(foreign, "front-proxy-client", client=True).write(tmp_path, "foreign"),
    }


async def test_front_proxy_client_certificate_is_required_when_configured(nats_server, front_proxy):
    scaler = await start_autoscaler(
        nats_server.url,
        requestheader_client_ca_file=front_proxy["ca"],
        requestheader_allowed_names=["front-proxy-client"],
    )
    hpa_user = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
    try:
        async with kube_client(scaler) as api:  # no client certificate
            with pytest.raises(ApiException) as err:
                await get(api, BASE, headers=hpa_user)
            assert err.value.status == 401 and "Unauthorized" in err.value.body
            assert (await api.call_api("/healthz", "GET", _preload_content=False)).status == 200
        async with kube_client(scaler, front_proxy["wrong_cn"]) as api:
            with pytest.raises(ApiException) as err:
                await get(api, BASE, headers=hpa_user)
            assert err.value.status == 401
        async with kube_client(scaler, front_proxy["good"]) as api:
            with pytest.raises(ApiException) as err:
                await get(api, BASE)  # a certificate but no user header
            assert err.value.status == 401
            assert (await get(api, BASE, headers=hpa_user))["kind"] == "APIResourceList"
        async with kube_client(scaler, front_proxy["foreign"]) as api:
            with pytest.raises((aiohttp.ClientError, OSError)):
                await get(api, BASE, headers=hpa_user)  # refused in the TLS handshake
    finally:
        await scaler.stop()


async def test_main_serves_and_exits_cleanly_on_sigterm(nats_server, tmp_path):
    port_file = tmp_path / "ports.json"  # through the environment, as the other flags here
    env = {
        **os.environ,
        "INFERGATE_NATS_URL": nats_server.url,
        "INFERGATE_SECURE_PORT": "0",
        "INFERGATE_PORT_FILE": str(port_file),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "autoscaler",
        "--ops-port",
        "0",
        "--bind-address",
        "127.0.0.1",
        "--ops-host",
        "127.0.0.1",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ports = await read_port_file(port_file, 30, alive=lambda: proc.returncode is None)
        secure, ops = ports["api"], ports["ops"]
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if proc.returncode is not None:
                    raise AssertionError(f"exited early: {(await proc.stderr.read()).decode()[-2000:]}")
                try:
                    async with http.get(f"http://127.0.0.1:{ops}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await poll_until(ready, "the service to be ready", deadline=20)
            async with http.get(f"https://127.0.0.1:{secure}{BASE}", ssl=False) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_front_proxy_settings_can_come_from_the_cluster_configmap(nats_server, front_proxy):
    """kube-apiserver publishes its request-header CA in kube-system/extension-apiserver-authentication."""
    ca_pem = front_proxy["ca_pem"]

    async def configmap(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
                "data": {
                    "requestheader-client-ca-file": ca_pem,
                    "requestheader-allowed-names": '["front-proxy-client"]',
                    "requestheader-username-headers": '["X-Remote-User"]',
                },
            }
        )

    app = web.Application()
    app.router.add_get(
        "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication", configmap
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    scaler = await start_autoscaler(
        nats_server.url, authentication_from_cluster=True, kube_api_url=f"http://127.0.0.1:{port}"
    )
    hpa_user = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
    try:
        async with kube_client(scaler) as api:
            with pytest.raises(ApiException) as err:
                await get(api, BASE, headers=hpa_user)
            assert err.value.status == 401
        async with kube_client(scaler, front_proxy["wrong_cn"]) as api:
            with pytest.raises(ApiException) as err:
                await get(api, BASE, headers=hpa_user)
            assert err.value.status == 401
        async with kube_client(scaler, front_proxy["good"]) as api:
            assert (await get(api, BASE, headers=hpa_user))["kind"] == "APIResourceList"
    finally:
        await scaler.stop()
        await runner.cleanup()


CHAT = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferenceModel",
    "metadata": {"name": "chat", "namespace": NS},
    "spec": {"modelName": "chat", "poolRef": {"name": POOL}, "targetModels": [{"name": MODEL}]},
}


async def test_model_names_come_from_watched_inference_models_before_any_request(nats_server, bus, kube_api):
    await kube_api.upsert(CHAT)
    scaler = await start_autoscaler(nats_server.url, watch_inference_models=True, kube_api_url=kube_api.url)
    try:
        await bus.snapshot("pod-0", waiting=3)
        async with kube_client(scaler) as api:
            await wait_until_value(api, "infergate-waiting-requests", 3, selector="model_name=chat")
            await kube_api.delete(CHAT)
            await wait_until_value(api, "infergate-waiting-requests", 3, selector=f"model_name={MODEL}")
    finally:
        await scaler.stop()


async def test_model_names_from_files(nats_server, bus, tmp_path):
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(CHAT))
    scaler = await start_autoscaler(nats_server.url, model_files=[str(tmp_path)])
    try:
        await bus.snapshot("pod-0", waiting=2)
        async with kube_client(scaler) as api:
            await wait_until_value(api, "infergate-waiting-requests", 2, selector="model_name=chat")
    finally:
        await scaler.stop()


async def test_pools_flag_follows_only_the_named_pools(nats_server, bus):
    scaler = await start_autoscaler(nats_server.url, pools=[f"{NS}/{POOL}"])
    try:
        other = EndpointSnapshot(
            namespace=NS,
            pool="other-pool",
            pod="x",
            address="x:8000",
            model=MODEL,
            waiting=50,
            ts=time.time(),
        )
        await bus.nc.publish(SUBJECTS.endpoint(NS, "other-pool", "x", 8000), encode(other))
        await bus.snapshot("pod-0", waiting=1)
        async with kube_client(scaler) as api:
            await wait_until_value(api, "infergate-waiting-requests", 1)
            items = (await get(api, f"{BASE}/namespaces/{NS}/infergate-waiting-requests"))["items"]
            assert {i["metricLabels"]["pool"] for i in items} == {POOL}
    finally:
        await scaler.stop()


async def test_after_a_nats_restart_the_autoscaler_follows_again(nats_server, bus):
    """The restarted server lost its memory streams: the feeds re-subscribe (and recreate them)."""
    scaler = await start_autoscaler(nats_server.url, staleness=30.0, window=10.0)
    try:
        async with kube_client(scaler) as api:
            await bus.snapshot("pod-0", waiting=1)
            await wait_until_value(api, "infergate-waiting-requests", 1)
            nats_server.stop()
            await poll_until(lambda: _false_when(scaler.bus.connected), "the outage noticed")
            nats_server.start()
            await poll_until(
                lambda: _false_when(not (scaler.bus.connected and bus.nc.is_connected)), "reconnected"
            )

            async def followed() -> bool:  # collectors republish every endpoint after a reconnect
                await bus.snapshot("pod-0", waiting=6)
                return await metric_sum(api, "infergate-waiting-requests") == 6

            await poll_until(followed, "a snapshot published after the restart to count")
            await bus.events(assignment("after"))
            await wait_until_value(api, "infergate-inflight-requests", 1)
    finally:
        await scaler.stop()


async def _false_when(value: bool) -> bool:
    return not value
