"""Peer sharing wired into two real picker services: one's request reaches the other's pool state."""

from __future__ import annotations

import json

import grpc
import nats

from picker.envoy_client import EnvoyStream, headers_of
from picker.service import Picker
from picker.sharing import SharingSettings
from shared.natsconn import NatsOptions, ensure_streams
from shared.schemas import encode
from shared.subjects import Subjects
from tests.support.pickers import loopback_config
from tests.support.snapshots import snapshot
from tests.support.waiting import wait_until

SUBJ = Subjects("infergate")
X, Y = "10.0.0.1:8000", "10.0.0.2:8000"
MODELS = """\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: chat}
spec:
  modelName: chat
  criticality: Critical
  poolRef: {name: pool}
"""


def picker(url: str, name: str, models: str) -> Picker:
    cfg = loopback_config(
        config_files=[models],
        replica_name=name,
        nats=NatsOptions(servers=[url], name=name, reconnect_wait=0.1),
        sharing=SharingSettings(replica=name, peer_timeout_s=0),
    )
    return Picker(cfg)


async def test_a_request_routed_by_one_picker_is_in_flight_on_the_other_until_it_completes(
    nats_server, tmp_path
):
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    nc = await nats.connect(nats_server.url)
    await ensure_streams(nc.jetstream(), SUBJ)
    for i, addr in enumerate((X, Y)):
        snap = snapshot(addr, pool="pool", pod=f"pod-{i}", kv_capacity_tokens=16_000)
        await nc.publish(SUBJ.endpoint("default", "pool", f"pod-{i}", 8000), encode(snap))
    await nc.flush()
    a, b = picker(nats_server.url, "picker-a", str(models)), picker(nats_server.url, "picker-b", str(models))
    try:
        await a.start()
        await b.start()
        await a.wait_ready(10)
        await b.wait_ready(10)
        async with grpc.aio.insecure_channel(a.address) as ch:
            s = EnvoyStream(ch).open()
            s.request_headers()
            body = {"model": "chat", "messages": [{"role": "user", "content": "hello " * 200}]}
            s.request_body(json.dumps(body).encode(), True)
            r = await s.recv()
            chosen = headers_of(r.request_headers.response.header_mutation)["x-gateway-destination-endpoint"]
            chosen = chosen.split(",")[0]
            await s.recv()  # the body
            # While the response is running, B counts A's request on the same endpoint.
            await wait_until(lambda: b.state.inflight.extra(chosen)[0] == 1, 10, "B sees A's request")
            assert len(b.state.inflight) == 1
            assert b.sharing.listener.applier.applied == 1
            s.response_headers()
            await s.recv()
            s.response_body(b"{}", True)
            await s.recv()
            await s.close()
        await wait_until(lambda: len(b.state.inflight) == 0, 10, "A's completion released it on B")
        assert a.sharing.listener.applier.applied == 0  # A never applies its own traffic twice
    finally:
        await a.stop(grace=0.1)
        await b.stop(grace=0.1)
        await nc.close()
