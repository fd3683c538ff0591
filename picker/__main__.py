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

from shared.config import EnvArgumentParser, add_settings, from_args
from shared.log import add_logging_flags, setup_logging
from shared.natsconn import add_nats_flags, options_from_args
from shared.portfile import add_port_file_flag, report_ports
from shared.service import run

from .config import PickerConfig
from .service import Picker
from .sharing.settings import add_sharing_flags, settings_from_args

log = logging.getLogger("picker")


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="infergate-picker", description="InferGate Endpoint Picker (Envoy ext_proc)")
    add_settings(p, PickerConfig)
    add_nats_flags(p)
    add_sharing_flags(p)  # also --replica-name
    add_logging_flags(p)
    add_port_file_flag(p)
    return p


def _kube_mode(args: argparse.Namespace) -> bool:
    """Explicit flags win; otherwise Kubernetes when running in a cluster without config files."""
    if args.kubeconfig or args.kube_host:
        return True
    if args.kube is not None:
        return bool(args.kube)
    return not args.config_files and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def config_from_args(args: argparse.Namespace) -> PickerConfig:
    """Every setting from its flag; the tri-state ``--kube`` and the composite NATS and
    sharing settings from their flag groups."""
    sharing = settings_from_args(args)
    return from_args(
        PickerConfig,
        args,
        kube=_kube_mode(args),
        replica_name=sharing.replica,
        nats=options_from_args(args, f"picker-{sharing.replica}") if args.nats else None,
        sharing=sharing if args.nats and sharing.enabled else None,
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
        ports = {"grpc": picker.grpc_port, "health": picker.health_port, "metrics": picker.metrics_port}
        report_ports("picker", ports, args.port_file)
        await stop.wait()
        await picker.stop()

    return run(_main)


if __name__ == "__main__":
    sys.exit(main())
