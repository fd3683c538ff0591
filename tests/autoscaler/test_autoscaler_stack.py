"""The autoscaler fed by the real stack: simulated vLLM pods, a collector, a picker with peer sharing.

Requests go through the picker exactly as Envoy sends them (``picker.envoy_client.EnvoyStream``
over gRPC), then to the simulated pod the picker chose; the picker publishes its
assignments and completions, the collector the pods' queues. The External Metrics API,
read over TLS with kubernetes-asyncio, must follow: in-flight and waiting rise under a
burst (the HPA formula asks for more replicas) and fall back to zero after (it asks for
the minimum).
"""

from __future__ import annotations

import asyncio
import json
import math
import textwrap

import aiohttp
import grpc
from kubernetes_asyncio import client

from autoscaler.quantity import parse_quantity
from autoscaler.service import Autoscaler, AutoscalerConfig
from collector.service import Collector, CollectorConfig
from collector.targets import Target
from picker.config import PickerConfig
from picker.envoy_client import EnvoyStream, headers_of
from picker.service import Picker
from picker.sharing.service import PeerSharing
from picker.sharing.settings import SharingSettings
from shared.natsbus import NatsBus
from shared.natsconn import NatsOptions
from shared.service import Supervisor
from sim.engine import EngineConfig
from sim.server import SimCluster

NS, POOL, BASE_MODEL = "default", "pool", "meta-llama/Llama-2-7b-hf"
METRICS = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/"
MODELS = textwrap.dedent(
    f"""\
    apiVersion: inference.networking.k8s.io/v1
    kind: InferencePool
    metadata: {{name: {POOL}}}
    spec:
      selector: {{matchLabels: {{app: vllm}}}}
      targetPorts: [{{number: 8000}}]
    ---
    apiVersion: inference.networking.x-k8s.io/v1alpha2
    kind: InferenceModel
    metadata: {{name: chat}}
    spec:
      modelName: chat
      poolRef: {{name: {POOL}}}
      targetModels: [{{name: {BASE_MODEL}}}]
    """
)


async def envoy_request(channel: grpc.aio.Channel, http: aiohttp.ClientSession, i: int) -> int:
    """One request as Envoy carries it: through the picker, to the chosen pod, response back."""
    body = json.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 120}
    ).encode()
    s = EnvoyStream(channel).open()
    s.request_headers(headers={"x-request-id": f"req-{i}"})
    s.request_body(body, True)
    headers = await s.recv(30)
    dest = headers_of(headers.request_headers.response.header_mutation)["x-gateway-destination-endpoint"]
    routed = (await s.recv(30)).request_body.response.body_mutation.streamed_response.body
    async with http.post(
        f"http://{dest.split(',')[0]}/v1/chat/completions",
        data=routed,
        headers={"content-type": "application/json"},
    ) as resp:
        payload = await resp.read()
        status = resp.status
    s.response_headers(status=status)
    await s.recv(30)
    s.response_body(payload, True)
    await s.recv(30)
    await s.close()
    return status


async def served(api: client.ApiClient, metric: str) -> float | None:
    body = await api.call_api(
        METRICS + metric,
        "GET",
        query_params=[("labelSelector", "model_name=chat")],
        header_params={"Accept": "application/json"},
        response_types_map={200: "object"},
        _return_http_data_only=True,
    )
    return sum(parse_quantity(i["value"]) for i in body["items"]) if body["items"] else None


def hpa_desired(current: int, total: float, target_average: float) -> int:
    ratio = (total / current) / target_average
    return current if abs(ratio - 1) <= 0.1 else max(1, min(10, math.ceil(ratio * current)))


async def poll(cond, what: str, deadline: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await cond():
        assert loop.time() < end, f"{what} not reached within {deadline}s"
        await asyncio.sleep(0.05)


async def test_served_load_follows_a_burst_through_the_real_stack(nats_server, tmp_path):
    url = nats_server.url
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    cluster = SimCluster(n=2, engine=EngineConfig(max_num_seqs=4), name_prefix="vllm")  # a burst queues
    await cluster.start()
    collector = Collector(
        CollectorConfig(
            node_name="n1",
            nats=NatsOptions(servers=[url]),
            targets=[Target(NS, POOL, p.name, "127.0.0.1", p.port) for p in cluster.pods],
            ops_port=None,
        )
    )
    picker = Picker(
        PickerConfig(
            pool_name=POOL,
            pool_namespace=NS,
            grpc_host="127.0.0.1",
            grpc_port=0,
            grpc_health_port=0,
            metrics_host="127.0.0.1",
            metrics_port=0,
            config_files=[str(models)],
            nats=NatsOptions(servers=[url]),
            unknown_model_policy="reject",
        )
    )
    sharing_bus = await NatsBus.connect(NatsOptions(servers=[url]))
    sharing = PeerSharing(sharing_bus, NS, POOL, SharingSettings(replica="picker-0"), picker.state)
    supervisor = Supervisor("test-sharing")
    scaler = Autoscaler(
        AutoscalerConfig(
            nats=NatsOptions(servers=[url]),
            secure_host="127.0.0.1",
            secure_port=0,
            ops_host="127.0.0.1",
            ops_port=0,
        )
    )
    try:
        await collector.start()
        await collector.wait_ready()
        sharing.start(supervisor)
        picker.sink = sharing.sink
        await picker.start()
        await picker.wait_ready(15)
        await scaler.start()
        conf = client.Configuration(
            host=f"https://127.0.0.1:{scaler.secure_port}", ssl_ca_cert=scaler.ca_file
        )
        async with (
            client.ApiClient(conf) as api,
            grpc.aio.insecure_channel(picker.address) as channel,
            aiohttp.ClientSession() as http,
        ):
            # Before any request the model is known from the snapshots only (model_name = target).
            assert await served(api, "infergate-inflight-requests") is None

            burst = [asyncio.create_task(envoy_request(channel, http, i)) for i in range(24)]
            seen = {"inflight": 0.0, "waiting": 0.0}

            async def loaded() -> bool:
                seen["inflight"] = max(
                    seen["inflight"], await served(api, "infergate-inflight-requests") or 0
                )
                seen["waiting"] = max(seen["waiting"], await served(api, "infergate-waiting-requests") or 0)
                return seen["inflight"] >= 16 and seen["waiting"] >= 4

            await poll(loaded, "in-flight and waiting to rise under the burst")
            replicas = int(await served(api, "infergate-ready-replicas") or 0)
            assert replicas == 2
            up = hpa_desired(replicas, seen["inflight"], target_average=4)
            assert up > replicas

            assert all(status == 200 for status in await asyncio.gather(*burst))

            async def drained() -> bool:
                return (
                    await served(api, "infergate-inflight-requests"),
                    await served(api, "infergate-waiting-requests"),
                ) == (0, 0)

            await poll(drained, "in-flight and waiting to fall back to zero")
            assert hpa_desired(up, 0, target_average=4) == 1
            assert (await served(api, "infergate-arrival-rate") or 0) > 0
            assert (await served(api, "infergate-output-tokens-per-second") or 0) > 0
    finally:
        await scaler.stop()
        await picker.stop(grace=0.5)
        await sharing.close()
        await supervisor.close()
        await sharing_bus.close()
        await collector.stop()
        await cluster.stop()
