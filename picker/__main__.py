"""``infergate-picker`` / ``python -m picker``: the Endpoint Picker service.

Flags keep upstream's names where upstream has them (``--pool-name``, ``--grpc-port``,
``--grpc-health-port``, ``--metrics-port``, ``--refresh-metrics-interval``,
``--metrics-staleness-threshold``, ``--secure-serving``, ``--cert-path``); every flag
also reads ``INFERGATE_<FLAG>`` from the environment (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from shared.config import EnvArgumentParser
from shared.log import add_logging_flags, setup_logging
from shared.natsconn import add_nats_flags, options_from_args
from shared.service import run

from .config import PickerConfig
from .service import Picker
from .sharing.settings import add_sharing_flags, settings_from_args

log = logging.getLogger("picker")


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="infergate-picker", description="InferGate Endpoint Picker (Envoy ext_proc)")
    pool = p.add_argument_group("pool")
    pool.add_argument("--pool-name", default="default-pool", help="InferencePool this picker serves")
    pool.add_argument("--pool-namespace", default="default", help="namespace of the InferencePool")
    srv = p.add_argument_group("serving")
    srv.add_argument("--grpc-host", default="0.0.0.0", help="address of the ext_proc and health servers")
    srv.add_argument("--grpc-port", type=int, default=9002, help="ext_proc gRPC port (0 = any)")
    srv.add_argument("--grpc-health-port", type=int, default=9003, help="grpc.health.v1 port (0 = any)")
    srv.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics, /healthz, /readyz")
    srv.add_argument("--metrics-port", type=int, default=9090, help="Prometheus + probes port (0 = any)")
    srv.add_argument(
        "--secure-serving",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="serve ext_proc over TLS (self-signed unless --cert-path/--cert-file are given)",
    )
    srv.add_argument("--cert-path", default=None, help="directory with tls.crt and tls.key (as upstream)")
    srv.add_argument("--cert-file", default=None, help="TLS certificate PEM (overrides --cert-path)")
    srv.add_argument("--key-file", default=None, help="TLS private key PEM (overrides --cert-path)")
    srv.add_argument(
        "--grace-period", type=float, default=10.0, help="seconds in-flight streams get on SIGTERM"
    )
    srv.add_argument(
        "--default-body-mode",
        default="FULL_DUPLEX_STREAMED",
        choices=["FULL_DUPLEX_STREAMED", "STREAMED", "BUFFERED"],
        help="request/response body mode assumed when Envoy sends no protocol_config",
    )
    srv.add_argument(
        "--destination-header-list",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="put the whole endpoint list (choice, fallbacks) in x-gateway-destination-endpoint; "
        "default: the choice only (the list always goes in the envoy.lb metadata)",
    )
    srv.add_argument(
        "--conformance-test-hooks",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="conformance tests only: honour test-epp-endpoint-selection and echo "
        "x-conformance-test-served-endpoint (lets any client pin itself to a pod)",
    )
    sch = p.add_argument_group("scheduling")
    sch.add_argument("--profile", default="default", help="scheduler profile name")
    sch.add_argument("--scheduler-config", default=None, help="scheduler YAML (profiles); built-in if unset")
    sch.add_argument(
        "--unknown-model-policy",
        default="route",
        choices=["route", "sheddable", "reject"],
        help="models no rewrite rule or InferenceModel names: route at priority 0 (upstream v1), "
        "route as Sheddable (priority -100), or 404",
    )
    sch.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="larger bodies get 413")
    sch.add_argument(
        "--refresh-metrics-interval",
        type=float,
        default=0.05,
        help="upstream compatibility: metrics are pushed over NATS here; accepted and reported only",
    )
    sch.add_argument(
        "--metrics-staleness-threshold",
        type=float,
        default=2.0,
        help="metrics older than this (s) count as stale in the view metrics and headers-only routing",
    )
    cfg = p.add_argument_group("configuration source")
    cfg.add_argument("--config-files", nargs="*", default=[], help="InferencePool/InferenceModel YAML files")
    cfg.add_argument("--config-poll-interval", type=float, default=1.0, help="seconds between file checks")
    cfg.add_argument(
        "--kube",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="watch the CRDs in Kubernetes (default: on inside a cluster when no --config-files are given)",
    )
    cfg.add_argument("--kubeconfig", default=None, help="kubeconfig file (implies --kube)")
    cfg.add_argument("--kube-host", default=None, help="plain Kubernetes API URL, no auth (tests)")
    cfg.add_argument(
        "--nats", action=argparse.BooleanOptionalAction, default=True, help="follow the pool view over NATS"
    )
    add_nats_flags(p)
    add_sharing_flags(p)  # also --replica-name
    add_logging_flags(p)
    return p


def _kube_mode(args: argparse.Namespace) -> bool:
    """Explicit flags win; otherwise Kubernetes when running in a cluster without config files."""
    if args.kubeconfig or args.kube_host:
        return True
    if args.kube is not None:
        return bool(args.kube)
    return not args.config_files and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def config_from_args(args: argparse.Namespace) -> PickerConfig:
    cert_file, key_file = args.cert_file, args.key_file
    if args.cert_path and not cert_file:
        cert_file = os.path.join(args.cert_path, "tls.crt")
        key_file = key_file or os.path.join(args.cert_path, "tls.key")
    sharing = settings_from_args(args)
    return PickerConfig(
        pool_name=args.pool_name,
        pool_namespace=args.pool_namespace,
        grpc_host=args.grpc_host,
        grpc_port=args.grpc_port,
        grpc_health_port=args.grpc_health_port,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        profile=args.profile,
        scheduler_config=args.scheduler_config,
        config_files=list(args.config_files or []),
        kube=_kube_mode(args),
        kubeconfig=args.kubeconfig,
        kube_host=args.kube_host,
        unknown_model_policy=args.unknown_model_policy,
        max_body_bytes=args.max_body_bytes,
        replica_name=sharing.replica,
        refresh_metrics_interval=args.refresh_metrics_interval,
        metrics_staleness_threshold=args.metrics_staleness_threshold,
        nats=options_from_args(args, f"picker-{sharing.replica}") if args.nats else None,
        sharing=sharing if args.nats and sharing.enabled else None,
        secure_serving=args.secure_serving,
        cert_file=cert_file,
        key_file=key_file,
        grace_period=args.grace_period,
        config_poll_interval=args.config_poll_interval,
        default_body_mode=args.default_body_mode,
        destination_header_list=args.destination_header_list,
        conformance_test_hooks=args.conformance_test_hooks,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("picker", args.log_level, args.log_format)
    try:
        cfg = config_from_args(args)
        picker = Picker(cfg)
    except Exception as exc:  # a bad scheduler config or flag combination: say why, exit 2
        log.error("cannot start the picker", extra={"error": str(exc)})
        return 2

    async def _main(stop: asyncio.Event) -> None:
        await picker.start()
        await stop.wait()
        await picker.stop()

    return run(_main)


if __name__ == "__main__":
    sys.exit(main())
