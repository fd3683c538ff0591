"""``python -m picker.envoy``: print an Envoy bootstrap for InferGate as JSON or YAML.

Every flag also reads ``INFERGATE_ENVOY_<FLAG>`` (lists comma-separated), so an init
container can render the configuration from a Deployment's environment. The ``ENVOY_``
infix keeps these apart from the picker's own ``INFERGATE_*`` variables in the same pod.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import (
    BootstrapOptions,
    FailureMode,
    Mode,
    RequestBodyMode,
    ResponseBodyMode,
)
from shared.config import EnvArgumentParser

_DEFAULTS = BootstrapOptions()


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(
        prog="python -m picker.envoy",
        description="Print an Envoy bootstrap for InferGate (picker or plain round-robin) as YAML or JSON.",
        env_prefix="INFERGATE_ENVOY_",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.PICKER.value,
        help="picker: route through the Endpoint Picker; round-robin: plain Envoy baseline",
    )
    p.add_argument("--listen-address", default=_DEFAULTS.listen_address)
    p.add_argument("--listen-port", type=int, default=_DEFAULTS.listen_port, help="client-facing HTTP port")
    p.add_argument("--admin-address", default=_DEFAULTS.admin_address)
    p.add_argument("--admin-port", type=int, default=_DEFAULTS.admin_port)
    p.add_argument(
        "--pickers",
        nargs="+",
        default=[str(h) for h in _DEFAULTS.pickers],
        help="Endpoint Picker replicas (ext_proc gRPC), host:port; a DNS name resolves to all replicas",
    )
    p.add_argument(
        "--picker-health-port",
        type=int,
        default=_DEFAULTS.picker_health_port,
        help="port of the pickers' grpc.health.v1 service (0: the ext_proc port)",
    )
    p.add_argument(
        "--picker-health-ports",
        nargs="*",
        type=int,
        default=[],
        help="one health port per --pickers entry (replicas sharing a host); overrides --picker-health-port",
    )
    p.add_argument(
        "--picker-tls",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="connect to the pickers over TLS (they run --secure-serving); health checks then use the "
        "ext_proc port",
    )
    p.add_argument("--picker-ca-file", default="", help="CA of the pickers' certificate (to verify them)")
    p.add_argument(
        "--picker-client-cert-file",
        default="",
        help="client certificate Envoy presents to the pickers (mutual TLS: their --client-ca-file)",
    )
    p.add_argument("--picker-client-key-file", default="", help="key of --picker-client-cert-file")
    p.add_argument("--picker-sni", default="", help="server name sent to the pickers")
    p.add_argument(
        "--pool-endpoints", nargs="*", default=[], help="model servers ip:port, for FailOpen and round-robin"
    )
    p.add_argument(
        "--failure-mode",
        choices=[f.value for f in FailureMode],
        default=_DEFAULTS.failure_mode.value,
        help="what happens when the picker is unreachable (upstream endpointPickerRef.failureMode)",
    )
    p.add_argument(
        "--request-body-mode",
        choices=["auto", *[m.value for m in RequestBodyMode]],
        default="auto",
        help="auto: FULL_DUPLEX_STREAMED for FailClose, BUFFERED for FailOpen",
    )
    p.add_argument(
        "--response-body-mode",
        choices=[m.value for m in ResponseBodyMode],
        default=_DEFAULTS.response_body_mode.value,
    )
    p.add_argument(
        "--max-endpoint-attempts",
        type=int,
        default=_DEFAULTS.max_endpoint_attempts,
        help="endpoints of the picker's list Envoy tries: the choice plus fallbacks",
    )
    p.add_argument(
        "--message-timeout",
        type=float,
        default=_DEFAULTS.message_timeout_s,
        help="seconds Envoy waits for each picker answer",
    )
    p.add_argument("--picker-connect-timeout", type=float, default=_DEFAULTS.picker_connect_timeout_s)
    p.add_argument("--upstream-connect-timeout", type=float, default=_DEFAULTS.upstream_connect_timeout_s)
    p.add_argument(
        "--route-timeout",
        type=float,
        default=_DEFAULTS.route_timeout_s,
        help="overall request deadline in seconds; 0 disables it (long LLM streams)",
    )
    p.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=_DEFAULTS.stream_idle_timeout_s,
        help="seconds without a byte before a stream is ended",
    )
    p.add_argument("--connection-idle-timeout", type=float, default=_DEFAULTS.connection_idle_timeout_s)
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=_DEFAULTS.max_request_bytes,
        help="larger request bodies get 413; 0: no limit (retries then replay at most Envoy's 1 MiB buffer)",
    )
    p.add_argument("--health-check-interval", type=float, default=_DEFAULTS.health_check_interval_s)
    p.add_argument(
        "--served-header",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULTS.served_header,
        help="add x-gateway-destination-endpoint-served (the serving ip:port) to responses",
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULTS.access_log,
        help="one JSON access-log line per request on Envoy's stdout",
    )
    p.add_argument(
        "--inference-paths",
        nargs="+",
        default=list(_DEFAULTS.inference_paths),
        help="the only paths served (exact); every other path is a 404 from Envoy",
    )
    p.add_argument("--format", choices=["json", "yaml"], default="yaml")
    p.add_argument("--output", default="-", help="file to write, - for stdout")
    p.add_argument(
        "--validate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run `envoy --mode validate` on the result (needs the envoy binary)",
    )
    return p


def options_from_args(args: argparse.Namespace) -> BootstrapOptions:
    return BootstrapOptions(
        mode=Mode(args.mode),
        listen_address=args.listen_address,
        listen_port=args.listen_port,
        admin_address=args.admin_address,
        admin_port=args.admin_port,
        pickers=tuple(args.pickers),
        picker_health_port=args.picker_health_port,
        picker_health_ports=tuple(args.picker_health_ports),
        picker_tls=args.picker_tls,
        picker_ca_file=args.picker_ca_file,
        picker_client_cert_file=args.picker_client_cert_file,
        picker_client_key_file=args.picker_client_key_file,
        picker_sni=args.picker_sni,
        pool_endpoints=tuple(args.pool_endpoints),
        failure_mode=FailureMode(args.failure_mode),
        request_body_mode=None
        if args.request_body_mode == "auto"
        else RequestBodyMode(args.request_body_mode),
        response_body_mode=ResponseBodyMode(args.response_body_mode),
        max_endpoint_attempts=args.max_endpoint_attempts,
        message_timeout_s=args.message_timeout,
        picker_connect_timeout_s=args.picker_connect_timeout,
        upstream_connect_timeout_s=args.upstream_connect_timeout,
        route_timeout_s=args.route_timeout,
        stream_idle_timeout_s=args.stream_idle_timeout,
        connection_idle_timeout_s=args.connection_idle_timeout,
        max_request_bytes=args.max_request_bytes,
        health_check_interval_s=args.health_check_interval,
        served_header=args.served_header,
        access_log=args.access_log,
        inference_paths=tuple(args.inference_paths),
    )


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the Lua source) as readable ``|`` blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def render(bootstrap: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(bootstrap, indent=2) + "\n"
    return yaml.dump(bootstrap, Dumper=_LiteralDumper, sort_keys=False, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    bootstrap = build_bootstrap(opts)
    text = render(bootstrap, args.format)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    if args.validate:
        from picker.envoy.process import validate

        ok, out = asyncio.run(validate(bootstrap))
        print(out.strip(), file=sys.stderr)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
