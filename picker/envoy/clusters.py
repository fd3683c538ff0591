"""The clusters of the bootstrap: pickers, the per-attempt original-destination chain, the pool.

Why a chain of ORIGINAL_DST clusters: the picker answers ``ip:port,ip:port,...`` (choice
first, fallbacks after), but an ORIGINAL_DST cluster parses its header as one address
and answers 503 for a list (checked against Envoy 1.40). So a filter splits the list
into one header per attempt (``x-infergate-endpoint-0``, ``-1``, ...), attempt *i* reads
its own header through its own ORIGINAL_DST cluster, and a composite cluster
(``envoy.clusters.composite``) hands attempt *i* to cluster *i*. The route's retry
policy drives the walk; pods need not be known to Envoy in advance.
"""

from __future__ import annotations

import datetime

from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    Cluster,
    ClusterCustomClusterType,
    ClusterDiscoveryType,
    ClusterLbPolicy,
    ClusterOriginalDstLbConfig,
    OutlierDetection,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    Http2ProtocolOptions,
    SocketAddress,
    TransportSocket,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    EndpointHealthCheckConfig,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.extensions.clusters.composite.v3 import ClusterConfig, ClusterConfigClusterEntry
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    TlsCertificate,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.google.protobuf import Any

from picker.envoy.options import ATTEMPT_HEADER_PREFIX, BootstrapOptions, HostPort

PICKER_CLUSTER = "infergate_picker"
MODEL_SERVERS_CLUSTER = "infergate_model_servers"
POOL_CLUSTER = "infergate_pool"

# Envoy's defaults (1024 requests, 3 concurrent retries) throttle a busy gateway: every
# LLM stream holds a request slot for its whole duration, and a fallback walk is a retry.
_LIMIT = 100_000


def seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def attempt_cluster_name(i: int) -> str:
    return f"{MODEL_SERVERS_CLUSTER}_attempt_{i}"


def attempt_header(i: int) -> str:
    return f"{ATTEMPT_HEADER_PREFIX}{i}"


def _address(hp: HostPort) -> Address:
    return Address(socket_address=SocketAddress(address=hp.host, port_value=hp.port))


def _discovery(hosts: tuple[HostPort, ...]) -> ClusterDiscoveryType:
    """STATIC for IPs; STRICT_DNS when any host is a name (a headless Service lists every replica)."""
    return ClusterDiscoveryType.STATIC if all(h.is_ip for h in hosts) else ClusterDiscoveryType.STRICT_DNS


def _circuit_breakers() -> CircuitBreakers:
    return CircuitBreakers(
        thresholds=[
            CircuitBreakersThresholds(
                max_connections=_LIMIT, max_pending_requests=_LIMIT, max_requests=_LIMIT, max_retries=_LIMIT
            )
        ]
    )


def _http2_options() -> dict[str, Any]:
    options = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions(
                initial_stream_window_size=65536, initial_connection_window_size=1048576
            )
        )
    )
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Any.pack(options)}


def _picker_outlier_detection() -> OutlierDetection:
    """Eject a picker replica on its first refused connection.

    Without this a replica that dies is only removed by the health check (two misses at
    the check interval), and LEAST_REQUEST meanwhile *prefers* the dead replica, which has
    no active requests: the fault report measured 25-46 failed requests per killed
    replica, and 2-4 (the streams already on it) with this. Only local-origin errors
    (connect failures, resets) count. The 5xx rule keeps its default: gRPC answers travel
    as HTTP 200 with a ``grpc-status`` trailer, so a picker's answer, even an error, never
    counts as a 5xx. (``consecutive_5xx`` cannot be set here anyway: betterproto2's snake
    casing spells it ``consecutive_5_xx``, which Envoy rejects.) The health check still
    decides when an ejected replica comes back.
    """
    return OutlierDetection(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=1,
        enforcing_consecutive_local_origin_failure=100,
        base_ejection_time=seconds(5.0),
        max_ejection_percent=50,
    )


def picker_transport_socket(opts: BootstrapOptions) -> TransportSocket | None:
    """TLS to the pickers (``h2`` over ALPN), verifying them and presenting a client certificate if set."""
    if not opts.picker_tls:
        return None
    common = CommonTlsContext(alpn_protocols=["h2"])
    if opts.picker_client_cert_file:
        common.tls_certificates = [
            TlsCertificate(
                certificate_chain=DataSource(filename=opts.picker_client_cert_file),
                private_key=DataSource(filename=opts.picker_client_key_file),
            )
        ]
    if opts.picker_ca_file:
        common.validation_context = CertificateValidationContext(
            trusted_ca=DataSource(filename=opts.picker_ca_file)
        )
    context = UpstreamTlsContext(common_tls_context=common, sni=opts.picker_sni)
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))


def picker_cluster(opts: BootstrapOptions) -> Cluster:
    """The Endpoint Picker replicas: HTTP/2 (gRPC), health-checked with grpc.health.v1.

    The health check targets ``picker_health_port`` on every replica (the picker serves
    grpc.health.v1 there, apart from ext_proc), so an overloaded or starting replica
    drops out of rotation without Envoy opening a doomed ext_proc stream to it. Replicas
    sharing one host (local runs) name their own ports in ``picker_health_ports``.
    """
    health_ports = opts.picker_health_ports or (opts.picker_health_port,) * len(opts.pickers)
    if opts.picker_tls:  # the health port is plaintext: check the ext_proc port over the same TLS
        health_ports = (0,) * len(opts.pickers)
    endpoints = [
        LbEndpoint(
            endpoint=Endpoint(
                address=_address(hp),
                health_check_config=EndpointHealthCheckConfig(port_value=port) if port else None,
            )
        )
        for hp, port in zip(opts.pickers, health_ports, strict=True)
    ]
    return Cluster(
        name=PICKER_CLUSTER,
        type=_discovery(opts.pickers),
        connect_timeout=seconds(opts.picker_connect_timeout_s),
        lb_policy=ClusterLbPolicy.LEAST_REQUEST,
        typed_extension_protocol_options=_http2_options(),
        circuit_breakers=_circuit_breakers(),
        outlier_detection=_picker_outlier_detection(),
        transport_socket=picker_transport_socket(opts),
        health_checks=[
            HealthCheck(
                timeout=seconds(1.0),
                interval=seconds(opts.health_check_interval_s),
                no_traffic_interval=seconds(opts.health_check_interval_s),
                unhealthy_threshold=2,
                healthy_threshold=1,
                grpc_health_check=HealthCheckGrpcHealthCheck(service_name=""),
            )
        ],
        load_assignment=ClusterLoadAssignment(
            cluster_name=PICKER_CLUSTER, endpoints=[LocalityLbEndpoints(lb_endpoints=endpoints)]
        ),
    )


def attempt_clusters(opts: BootstrapOptions) -> list[Cluster]:
    """One ORIGINAL_DST cluster per attempt, each reading its own split header."""
    return [
        Cluster(
            name=attempt_cluster_name(i),
            type=ClusterDiscoveryType.ORIGINAL_DST,
            lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
            connect_timeout=seconds(opts.upstream_connect_timeout_s),
            circuit_breakers=_circuit_breakers(),
            original_dst_lb_config=ClusterOriginalDstLbConfig(
                use_http_header=True, http_header_name=attempt_header(i)
            ),
        )
        for i in range(opts.max_endpoint_attempts)
    ]


def model_servers_cluster(opts: BootstrapOptions) -> Cluster:
    """The composite cluster routes use: attempt i goes to ``attempt_cluster_name(i)``."""
    config = ClusterConfig(
        clusters=[
            ClusterConfigClusterEntry(name=attempt_cluster_name(i)) for i in range(opts.max_endpoint_attempts)
        ]
    )
    return Cluster(
        name=MODEL_SERVERS_CLUSTER,
        connect_timeout=seconds(opts.upstream_connect_timeout_s),
        lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
        circuit_breakers=_circuit_breakers(),
        cluster_type=ClusterCustomClusterType(name="envoy.clusters.composite", typed_config=Any.pack(config)),
    )


def pool_cluster(opts: BootstrapOptions) -> Cluster:
    """The pool's model servers behind plain round robin (FailOpen and the round-robin baseline).

    No outlier detection: the route's retry (previous_hosts predicate) already steps
    past a server that refuses connections, and ejecting on 5xx would hide overload
    that the comparison with the picker is meant to show.
    """
    return Cluster(
        name=POOL_CLUSTER,
        type=_discovery(opts.pool_endpoints),
        connect_timeout=seconds(opts.upstream_connect_timeout_s),
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        circuit_breakers=_circuit_breakers(),
        load_assignment=ClusterLoadAssignment(
            cluster_name=POOL_CLUSTER,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(endpoint=Endpoint(address=_address(hp))) for hp in opts.pool_endpoints
                    ]
                )
            ],
        ),
    )


def clusters(opts: BootstrapOptions) -> list[Cluster]:
    out: list[Cluster] = []
    if opts.mode == "picker":
        out += [picker_cluster(opts), model_servers_cluster(opts), *attempt_clusters(opts)]
    if opts.uses_pool_cluster:
        out.append(pool_cluster(opts))
    return out
