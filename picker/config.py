"""The picker's settings, each declared once.

Every field made with :func:`~shared.config.setting` is also a flag of ``infergate-picker``
(``--<field-name>`` unless named otherwise) and an ``INFERGATE_<FLAG>`` variable: its name,
type, default, group and help are written here and nowhere else (``picker/__main__.py``
derives the parser and the conversion). Plain fields are filled from other flag groups
(NATS, peer sharing) or set by code and tests.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from shared.config import setting
from shared.natsconn import NatsOptions

from .sharing.settings import default_replica_name

__all__ = ["BODY_MODES", "PickerConfig"]

BODY_MODES = ("FULL_DUPLEX_STREAMED", "STREAMED", "BUFFERED")
POOL, SERVING, SCHEDULING, SOURCE = "pool", "serving", "scheduling", "configuration source"
FLOW = "flow control"


@dataclass
class PickerConfig:
    """Everything a :class:`~picker.service.Picker` needs; the CLI fills it from flags."""

    # pool
    pool_name: str = setting("default-pool", group=POOL, help="InferencePool this picker serves")
    pool_namespace: str = setting("default", group=POOL, help="namespace of the InferencePool")
    # serving
    grpc_host: str = setting("0.0.0.0", group=SERVING, help="address of the ext_proc and health servers")
    grpc_port: int = setting(9002, group=SERVING, help="ext_proc gRPC port (0 = any)")
    grpc_health_port: int = setting(9003, group=SERVING, help="grpc.health.v1 port (0 = any)")
    metrics_host: str = setting("0.0.0.0", group=SERVING, help="address of /metrics, /healthz, /readyz")
    metrics_port: int = setting(9090, group=SERVING, help="Prometheus + probes port (0 = any)")
    secure_serving: bool = setting(
        False,
        group=SERVING,
        help="serve ext_proc over TLS (self-signed unless --cert-path/--cert-file are given)",
    )
    # cert_file/key_file default to tls.crt/tls.key in cert_path (upstream's flag)
    cert_path: str | None = setting(
        None, group=SERVING, help="directory with tls.crt and tls.key (as upstream)"
    )
    cert_file: str | None = setting(None, group=SERVING, help="TLS certificate PEM (overrides --cert-path)")
    key_file: str | None = setting(None, group=SERVING, help="TLS private key PEM (overrides --cert-path)")
    # Mutual TLS: only clients (Envoy) with a certificate signed by this CA may open a connection.
    client_ca_file: str | None = setting(
        None,
        group=SERVING,
        help="with --secure-serving: require a client certificate signed by this CA (PEM) on the "
        "ext_proc port (mutual TLS between Envoy and the picker)",
    )
    grace_period: float = setting(10.0, group=SERVING, help="seconds in-flight streams get on SIGTERM")
    default_body_mode: str = setting(
        "FULL_DUPLEX_STREAMED",
        group=SERVING,
        choices=BODY_MODES,
        help="request/response body mode assumed when Envoy sends no protocol_config",
    )
    # The whole ordered list in x-gateway-destination-endpoint (default: the choice only;
    # the list always goes in the envoy.lb dynamic metadata).
    destination_header_list: bool = setting(
        False,
        group=SERVING,
        help="put the whole endpoint list (choice, fallbacks) in x-gateway-destination-endpoint; "
        "default: the choice only (the list always goes in the envoy.lb metadata)",
    )
    # Conformance test hooks: honour test-epp-endpoint-selection and echo the served
    # endpoint as x-conformance-test-served-endpoint. Off: any client could pin a pod.
    conformance_test_hooks: bool = setting(
        False,
        group=SERVING,
        help="conformance tests only: honour test-epp-endpoint-selection and echo "
        "x-conformance-test-served-endpoint (lets any client pin itself to a pod)",
    )
    # scheduling
    profile: str = setting("default", group=SCHEDULING, help="scheduler profile name")
    scheduler_config: str | None = setting(
        None, group=SCHEDULING, help="scheduler YAML (profiles); built-in if unset"
    )
    unknown_model_policy: str = setting(  # picker.models.POLICIES
        "route",
        group=SCHEDULING,
        choices=("route", "sheddable", "reject"),
        help="models no rewrite rule or InferenceModel names: route at priority 0 (upstream v1), "
        "route as Sheddable (priority -100), or 404",
    )
    model_metric_label_limit: int = setting(
        0,
        group=SERVING,
        help="model names neither configured nor served by the pool's pods that still become metric "
        "label values, first come (at most 1000; the rest read 'other')",
    )
    fairness_id_metric_label_limit: int = setting(
        100,
        group=SERVING,
        help="fairness ids that become metric label values, first come (at most 1000; the rest read 'other')",
    )
    max_body_bytes: int = setting(8 * 1024 * 1024, group=SCHEDULING, help="larger bodies get 413")
    max_request_headers: int = setting(
        100,
        group=SCHEDULING,
        help="Envoy's max_headers_count: a request whose headers plus the picker's own would pass it "
        "gets 431 (0: no check)",
    )
    refresh_metrics_interval: float = setting(
        0.05,
        group=SCHEDULING,
        help="upstream compatibility: metrics are pushed over NATS here; accepted and reported only",
    )
    metrics_staleness_threshold: float = setting(
        2.0,
        group=SCHEDULING,
        help="metrics older than this (s) count as stale in the view metrics and headers-only routing",
    )
    # flow control (picker.flow): the profile's flow_control block, these override it
    flow_control: str = setting(
        "profile",
        group=FLOW,
        choices=("profile", "on", "off"),
        help="queue requests in the picker (bands, fairness, late binding): as the profile says, or force it",
    )
    flow_control_ttl: float | None = setting(None, group=FLOW, help="seconds a request may wait (default 60)")
    flow_control_scale_from_zero_ttl: float | None = setting(
        None, group=FLOW, help="seconds a request waits for a first ready endpoint (0: 503 at once)"
    )
    flow_control_fairness: str | None = setting(
        None, group=FLOW, help="round-robin | least-attained-service | global-strict"
    )
    flow_control_detector: str | None = setting(None, group=FLOW, help="utilization | concurrency")
    flow_control_max_requests_per_pod: int | None = setting(
        None, group=FLOW, help="concurrency detector: requests in flight per pod, all replicas together"
    )
    # configuration source
    config_files: list[str] = setting(
        default_factory=list, group=SOURCE, help="InferencePool/InferenceModel YAML files"
    )
    config_poll_interval: float = setting(1.0, group=SOURCE, help="seconds between file checks")
    # The CLI's default is "auto" (None): on inside a cluster when no config files are given.
    kube: bool = setting(
        False,
        group=SOURCE,
        cli_default=None,
        help="watch the CRDs in Kubernetes (default: on inside a cluster when no --config-files are given)",
    )
    kubeconfig: str | None = setting(None, group=SOURCE, help="kubeconfig file (implies --kube)")
    kube_host: str | None = setting(None, group=SOURCE, help="plain Kubernetes API URL, no auth (tests)")
    # None: no NATS, the view is fed in-process. The flag switches it; the NATS group fills it.
    nats: NatsOptions | None = setting(
        None,
        group=SOURCE,
        cli_default=True,
        action=argparse.BooleanOptionalAction,
        help="follow the pool view over NATS",
    )
    # Filled from the peer-sharing flags (picker.sharing.settings).
    replica_name: str = field(default_factory=default_replica_name)
    # picker.sharing.SharingSettings: peer sharing over the same NATS connection (None: off)
    sharing: Any = None

    def __post_init__(self) -> None:
        if self.cert_path and not self.cert_file:
            self.cert_file = os.path.join(self.cert_path, "tls.crt")
            self.key_file = self.key_file or os.path.join(self.cert_path, "tls.key")
        if self.client_ca_file and not self.secure_serving:
            raise ValueError("--client-ca-file (mutual TLS) needs --secure-serving")
