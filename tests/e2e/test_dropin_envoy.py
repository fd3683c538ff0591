"""The real picker behind two real Envoy 1.40 configurations, in front of simulated vLLM pods.

1. **Upstream's test configuration** (GIE ``test/testdata/envoy.yaml``), only addresses
   changed: ext_proc over TLS (the picker with ``--secure-serving``), a gRPC health check
   on the ext_proc port, one ``ORIGINAL_DST`` cluster reading
   ``x-gateway-destination-endpoint``, no ``receiving_namespaces`` (the metadata is
   dropped). The picker runs with its default flags otherwise. Every request must come
   back 200 from the pod the picker chose.
2. **InferGate's generated configuration**: a pod dies while the picker's view still
   lists it as the best; the header names only that dead pod, so the request reaches a
   live one only by walking the fallbacks of the ``envoy.lb`` metadata.

The pods say who served through a response header added in the test (aiohttp's
``on_response_prepare``); the picker's choice is read from its EventSink.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from picker.service import Picker
from shared.natsd import free_port
from sim.server import SimCluster
from tests.support.pickers import loopback_config
from tests.support.snapshots import snapshot

pytestmark = pytest.mark.e2e

MODEL = "meta-llama/Llama-2-7b-hf"
SERVED_BY = "x-test-served-by"
T = "type.googleapis.com/envoy."
MODELS_YAML = f"""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: base}}
spec: {{modelName: {MODEL}, criticality: Critical, poolRef: {{name: pool}}}}
"""


class Choices:
    """The picker's EventSink: the address it chose for each request, in order.

    (By request order, not id: upstream's Envoy is an edge proxy that replaces a
    client's ``x-request-id``; the tests send one request at a time.)
    """

    def __init__(self) -> None:
        self.chosen: list[str] = []

    def on_local_assignment(self, request, address, now):
        self.chosen.append(address)

    def on_local_completion(self, *args):
        pass


def _tagger(pod):
    async def tag(request, response) -> None:
        response.headers[SERVED_BY] = pod.address

    return tag


@contextlib.asynccontextmanager
async def pods(n: int) -> AsyncIterator[SimCluster]:
    cluster = SimCluster(n=n, time_scale=0.2)
    for pod in cluster.pods:
        pod.app.on_response_prepare.append(_tagger(pod))
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def _refresh(picker: Picker, waiting: dict[str, int]) -> None:
    """Stand in for the collectors: fresh snapshots of every pod, 20 times a second."""
    seq = 0
    while True:
        seq += 1
        for address, queue in waiting.items():
            picker.view.apply(
                snapshot(address, pool="pool", model=MODEL, served_models=[MODEL], waiting=queue, seq=seq)
            )
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def picker_for(tmp_path: Path, waiting: dict[str, int], **cfg_kw) -> AsyncIterator[Picker]:
    config = tmp_path / "models.yaml"
    config.write_text(MODELS_YAML)
    cfg = loopback_config(
        config_files=[str(config)],
        **cfg_kw,
    )
    p = Picker(cfg, sink=Choices())
    await p.start()
    refresher = asyncio.create_task(_refresh(p, waiting))
    try:
        await p.wait_ready()
        yield p
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await p.stop(grace=0.5)


def upstream_envoy_config(listen_port: int, admin_port: int, picker_port: int, body_mode: str) -> dict:
    """GIE's test/testdata/envoy.yaml (the parts that matter), with local addresses.

    FULL_DUPLEX_STREAMED bodies (request and response, trailers SEND) as upstream v1.x
    runs; or BUFFERED request bodies with response headers SKIP, as its earlier copy of
    the file. Either way, ext_proc has no metadata_options: Envoy drops the envoy.lb list.
    """
    if body_mode == "FULL_DUPLEX_STREAMED":
        mode = {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "FULL_DUPLEX_STREAMED",
            "response_body_mode": "FULL_DUPLEX_STREAMED",
            "request_trailer_mode": "SEND",
            "response_trailer_mode": "SEND",
        }
    else:
        mode = {
            "request_header_mode": "SEND",
            "response_header_mode": "SKIP",
            "request_body_mode": "BUFFERED",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "http-8081",
        "route_config": {
            "name": "vllm",
            "virtual_hosts": [
                {
                    "name": "vllm-default",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": "original_destination_cluster",
                                "timeout": "86400s",
                                "idle_timeout": "86400s",
                                "upgrade_configs": [{"upgrade_type": "websocket"}],
                            },
                            "typed_per_filter_config": {
                                "envoy.filters.http.ext_proc": {
                                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                                    "config": {},
                                }
                            },
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.ext_proc",
                "typed_config": {
                    "@type": T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
                    "grpc_service": {
                        "envoy_grpc": {
                            "cluster_name": "ext_proc",
                            "authority": "inference-gateway-ext-proc.default:9002",
                        },
                        "timeout": "10s",
                    },
                    "processing_mode": mode,
                    "message_timeout": "1000s",
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            },
        ],
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "server_header_transformation": "PASS_THROUGH",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
    }
    limits = {"max_connections": 40000, "max_pending_requests": 40000, "max_requests": 40000}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "vllm",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                    "per_connection_buffer_limit_bytes": 32768,
                    "filter_chains": [
                        {
                            "name": "vllm",
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ],
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "original_destination_cluster",
                    "type": "ORIGINAL_DST",
                    "connect_timeout": "1000s",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "circuit_breakers": {"thresholds": [limits]},
                    "original_dst_lb_config": {
                        "use_http_header": True,
                        "http_header_name": "x-gateway-destination-endpoint",
                    },
                },
                {
                    "name": "ext_proc",
                    "type": "STATIC",
                    "connect_timeout": "86400s",
                    "lb_policy": "LEAST_REQUEST",
                    "circuit_breakers": {"thresholds": [{**limits, "max_retries": 1024}]},
                    # Upstream: an empty validation context accepts the picker's self-signed cert.
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "common_tls_context": {"validation_context": {}},
                        },
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "initial_stream_window_size": 65536,
                                    "initial_connection_window_size": 1048576,
                                }
                            },
                        }
                    },
                    # The gRPC health check on the ext_proc port itself (over the same TLS).
                    "health_checks": [
                        {
                            "timeout": "1s",
                            "interval": "0.5s",
                            "no_traffic_interval": "0.5s",
                            "unhealthy_threshold": 1,
                            "healthy_threshold": 1,
                            "grpc_health_check": {},
                        }
                    ],
                    "load_assignment": {
                        "cluster_name": "ext_proc",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": picker_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
            ],
        },
    }


async def _complete(http: aiohttp.ClientSession, url: str, request_id: str) -> tuple[int, str, str]:
    body = {"model": MODEL, "prompt": f"Say hello to request {request_id}.", "max_tokens": 2}
    async with http.post(url + "/v1/completions", json=body, headers={"x-request-id": request_id}) as resp:
        text = await resp.text()
        return resp.status, resp.headers.get(SERVED_BY, ""), text


@pytest.mark.parametrize("body_mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
async def test_upstreams_envoy_config_routes_every_request_to_the_pickers_choice(
    tmp_path: Path, envoy_binary: str, body_mode: str
) -> None:
    async with pods(3) as cluster:
        waiting = dict.fromkeys(cluster.addresses, 0)
        async with picker_for(tmp_path, waiting, secure_serving=True) as picker:
            listen, admin = free_port(), free_port()
            config = upstream_envoy_config(listen, admin, picker.grpc_port, body_mode)
            async with EnvoyProcess(config, envoy_binary) as envoy, aiohttp.ClientSession() as http:
                # Envoy's gRPC health check of the ext_proc port (over TLS) passes.
                for _ in range(200):
                    stats = await envoy.stats("cluster.ext_proc.")
                    if stats.get("cluster.ext_proc.health_check.success", 0) >= 1:
                        break
                    await asyncio.sleep(0.05)
                hc = {k: v for k, v in stats.items() if "health" in k or "membership" in k or "ssl" in k}
                assert stats.get("cluster.ext_proc.health_check.success", 0) >= 1, (hc, envoy.log_tail())
                assert stats.get("cluster.ext_proc.membership_healthy") == 1, stats

                url = f"http://127.0.0.1:{listen}"
                for i in range(24):
                    status, served, text = await _complete(http, url, f"{body_mode}-{i}")
                    assert status == 200, (i, text, envoy.log_tail())
                    assert len(picker.sink.chosen) == i + 1
                    assert served == picker.sink.chosen[i], i


async def test_generated_config_walks_the_metadata_fallbacks_when_a_pod_dies(
    tmp_path: Path, envoy_binary: str
) -> None:
    async with pods(3) as cluster:
        dead = cluster.pods[0].address
        # The view makes the dead pod the best choice: empty queue, the others busy.
        waiting = {a: 0 if a == dead else 3 for a in cluster.addresses}
        async with picker_for(tmp_path, waiting) as picker:
            opts = BootstrapOptions(
                pickers=(picker.address,),
                picker_health_port=picker.health_port,
                listen_address="127.0.0.1",
                listen_port=free_port(),
                admin_port=free_port(),
            )
            async with EnvoyProcess(build_bootstrap(opts), envoy_binary), aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{opts.listen_port}"
                status, served, _ = await _complete(http, url, "before")
                assert (status, served) == (200, picker.sink.chosen[0] == dead and dead)
                await cluster.kill(0)  # the collectors have not noticed yet: the view still lists it
                for i in range(10):
                    status, served, text = await _complete(http, url, f"after-{i}")
                    assert status == 200, text
                    assert served in cluster.addresses and served != dead
                # The picker kept choosing the dead pod (the header named only it); a fallback
                # from the metadata list served every one of those requests.
                assert picker.sink.chosen[1:] == [dead] * 10, picker.sink.chosen
