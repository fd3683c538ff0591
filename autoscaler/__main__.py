"""``infergate-autoscaler`` / ``python -m autoscaler``: the External Metrics API server for the HPA."""

from __future__ import annotations

import argparse
import asyncio
import logging

from autoscaler.service import Autoscaler, AutoscalerConfig
from shared.config import EnvArgumentParser
from shared.log import add_logging_flags, setup_logging
from shared.natsconn import add_nats_flags, options_from_args
from shared.ops import add_ops_flags
from shared.service import run

log = logging.getLogger(__name__)


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def namespace_pool_list(text: str) -> list[str]:
    pools = _names(text)
    for pool in pools:
        namespace, _, name = pool.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"{pool!r} is not namespace/pool")
    return pools


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="infergate-autoscaler", description=__doc__)
    add_nats_flags(p)
    add_logging_flags(p)
    add_ops_flags(p, default_port=9095)
    api = p.add_argument_group("External Metrics API")
    api.add_argument("--bind-address", default="0.0.0.0", help="address of the HTTPS metrics API")
    api.add_argument("--secure-port", type=int, default=6443, help="port of the HTTPS metrics API (0 = any)")
    api.add_argument(
        "--tls-cert-file", default=None, help="serving certificate (PEM, chain); generated if unset"
    )
    api.add_argument("--tls-private-key-file", default=None, help="key of --tls-cert-file")
    api.add_argument(
        "--tls-sans", type=_names, default=[], help="comma-separated DNS names/IPs of a generated certificate"
    )
    api.add_argument(
        "--authentication-from-cluster",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="read the --requestheader-* settings from kube-system/extension-apiserver-authentication "
        "(explicit flags win)",
    )
    api.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    api.add_argument(
        "--kube-api-url", default=None, help="plain Kubernetes API URL, e.g. from `kubectl proxy`"
    )
    api.add_argument(
        "--requestheader-client-ca-file",
        default=None,
        help="CA that signs the aggregator's front-proxy client certificate; when set, the metrics routes "
        "require that certificate and a user header",
    )
    api.add_argument(
        "--requestheader-allowed-names",
        type=_names,
        default=[],
        help="comma-separated front-proxy client-certificate CNs allowed (empty = any the CA signed)",
    )
    api.add_argument(
        "--requestheader-username-headers",
        type=_names,
        default=["X-Remote-User"],
        help="comma-separated request headers carrying the user name",
    )
    agg = p.add_argument_group("aggregation")
    agg.add_argument("--window", type=float, default=30.0, help="sliding window of the rates, seconds")
    agg.add_argument(
        "--staleness", type=float, default=10.0, help="a snapshot older than this (seconds) no longer counts"
    )
    agg.add_argument(
        "--inflight-ttl", type=float, default=300.0, help="an assignment without completion expires after (s)"
    )
    agg.add_argument(
        "--pools",
        type=namespace_pool_list,
        default=[],
        help="comma-separated namespace/pool to follow (empty = every pool)",
    )
    agg.add_argument(
        "--config-files",
        type=_names,
        default=[],
        help="comma-separated YAML files/dirs (InferenceModelRewrite, InferenceModel) naming the targets "
        "(model_name label)",
    )
    agg.add_argument(
        "--watch-inference-models",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="watch InferenceModelRewrites (x-k8s.io and llm-d.ai v1alpha2) and InferenceModels for the "
        "model_name label",
    )
    agg.add_argument(
        "--namespaces", type=_names, default=[], help="namespaces of the InferenceModel watch (empty = all)"
    )
    agg.add_argument(
        "--create-streams",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create/update the JetStream streams at start",
    )
    return p


def config_from_args(args: argparse.Namespace) -> AutoscalerConfig:
    return AutoscalerConfig(
        nats=options_from_args(args, "infergate-autoscaler"),
        secure_host=args.bind_address,
        secure_port=args.secure_port,
        tls_cert_file=args.tls_cert_file,
        tls_private_key_file=args.tls_private_key_file,
        tls_hosts=args.tls_sans,
        requestheader_client_ca_file=args.requestheader_client_ca_file,
        requestheader_allowed_names=args.requestheader_allowed_names,
        requestheader_username_headers=args.requestheader_username_headers,
        window=args.window,
        staleness=args.staleness,
        inflight_ttl=args.inflight_ttl,
        pools=args.pools,
        ops_host=args.ops_host,
        ops_port=args.ops_port,
        create_streams=args.create_streams,
        authentication_from_cluster=args.authentication_from_cluster,
        kubeconfig=args.kubeconfig,
        kube_api_url=args.kube_api_url,
        model_files=args.config_files,
        watch_inference_models=args.watch_inference_models,
        namespaces=args.namespaces,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("autoscaler", args.log_level, args.log_format)
    config = config_from_args(args)

    async def _main(stop: asyncio.Event) -> None:
        autoscaler = Autoscaler(config)
        try:
            await autoscaler.start(stop=stop)
        except ConnectionError:
            return  # stopped before NATS answered
        try:
            await stop.wait()
        finally:
            await autoscaler.stop()

    return run(_main)


if __name__ == "__main__":
    raise SystemExit(main())
