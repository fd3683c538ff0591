"""The autoscaler's settings, each declared once.

Every field made with :func:`~shared.config.setting` is also a flag of
``infergate-autoscaler`` and an ``INFERGATE_<FLAG>`` variable: name, type, default, group and
help are written here only (``autoscaler/__main__.py`` derives the parser and the
conversion). Plain fields come from other flag groups (NATS, ops server) or from tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.config import setting
from shared.natsconn import NatsOptions

__all__ = ["AutoscalerConfig", "comma_list", "namespace_pool_list"]

API, AGGREGATION = "External Metrics API", "aggregation"


def comma_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def namespace_pool_list(text: str) -> list[str]:
    pools = comma_list(text)
    for pool in pools:
        namespace, _, name = pool.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"{pool!r} is not namespace/pool")
    return pools


@dataclass(slots=True)
class AutoscalerConfig:
    """Everything an :class:`~autoscaler.service.Autoscaler` needs; the CLI fills it from flags."""

    # External Metrics API
    secure_host: str = setting(
        "0.0.0.0", group=API, flag="--bind-address", help="address of the HTTPS metrics API"
    )
    secure_port: int = setting(6443, group=API, help="port of the HTTPS metrics API (0 = any)")
    tls_cert_file: str | None = setting(
        None, group=API, help="serving certificate (PEM, chain); generated if unset"
    )
    tls_private_key_file: str | None = setting(None, group=API, help="key of --tls-cert-file")
    # SANs of a generated serving certificate
    tls_hosts: list[str] = setting(
        default_factory=list,
        group=API,
        flag="--tls-sans",
        type=comma_list,
        help="comma-separated DNS names/IPs of a generated certificate",
    )
    # Read --requestheader-* from kube-system/extension-apiserver-authentication (flags still win).
    authentication_from_cluster: bool = setting(
        False,
        group=API,
        help="read the --requestheader-* settings from kube-system/extension-apiserver-authentication "
        "(explicit flags win)",
    )
    kubeconfig: str | None = setting(
        None, group=API, help="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    # a plain URL (kubectl proxy, tests) instead of a kubeconfig
    kube_api_url: str | None = setting(
        None, group=API, help="plain Kubernetes API URL, e.g. from `kubectl proxy`"
    )
    requestheader_client_ca_file: str | None = setting(
        None,
        group=API,
        help="CA that signs the aggregator's front-proxy client certificate; when set, the metrics routes "
        "require that certificate and a user header",
    )
    requestheader_allowed_names: list[str] = setting(
        default_factory=list,
        group=API,
        type=comma_list,
        help="comma-separated front-proxy client-certificate CNs allowed (empty = any the CA signed)",
    )
    requestheader_username_headers: list[str] = setting(
        default_factory=lambda: ["X-Remote-User"],
        group=API,
        type=comma_list,
        help="comma-separated request headers carrying the user name",
    )
    # aggregation
    window: float = setting(30.0, group=AGGREGATION, help="sliding window of the rates, seconds")
    staleness: float = setting(
        10.0, group=AGGREGATION, help="a snapshot older than this (seconds) no longer counts"
    )
    inflight_ttl: float = setting(
        300.0, group=AGGREGATION, help="an assignment without completion expires after (s)"
    )
    # "namespace/pool"; empty = every pool
    pools: list[str] = setting(
        default_factory=list,
        group=AGGREGATION,
        type=namespace_pool_list,
        help="comma-separated namespace/pool to follow (empty = every pool)",
    )
    # Client-facing model names: InferenceModel files, and/or InferenceModels watched in Kubernetes.
    model_files: list[str] = setting(
        default_factory=list,
        group=AGGREGATION,
        flag="--config-files",
        type=comma_list,
        help="comma-separated YAML files/dirs (InferenceModelRewrite, InferenceModel) naming the targets "
        "(model_name label)",
    )
    watch_inference_models: bool = setting(
        False,
        group=AGGREGATION,
        help="watch InferenceModelRewrites (x-k8s.io and llm-d.ai v1alpha2) and InferenceModels for the "
        "model_name label",
    )
    # of the watch; empty = all
    namespaces: list[str] = setting(
        default_factory=list,
        group=AGGREGATION,
        type=comma_list,
        help="namespaces of the InferenceModel watch (empty = all)",
    )
    create_streams: bool = setting(
        True, group=AGGREGATION, help="create/update the JetStream streams at start"
    )
    # from the NATS and ops flags (shared.natsconn, shared.ops)
    nats: NatsOptions = field(default_factory=NatsOptions)
    ops_host: str = "0.0.0.0"
    ops_port: int = 9095
