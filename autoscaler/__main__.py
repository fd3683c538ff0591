"""``infergate-autoscaler`` / ``python -m autoscaler``: the External Metrics API server for the HPA."""

from __future__ import annotations

import argparse
import asyncio
import logging

from autoscaler.config import AutoscalerConfig
from autoscaler.service import Autoscaler
from shared.config import EnvArgumentParser, add_settings, from_args
from shared.log import add_logging_flags, setup_logging
from shared.natsconn import add_nats_flags, options_from_args
from shared.ops import add_ops_flags
from shared.portfile import add_port_file_flag, report_ports
from shared.service import run

log = logging.getLogger(__name__)


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="infergate-autoscaler", description=__doc__)
    add_nats_flags(p)
    add_logging_flags(p)
    add_ops_flags(p, default_port=9095)
    add_settings(p, AutoscalerConfig)
    add_port_file_flag(p)
    return p


def config_from_args(args: argparse.Namespace) -> AutoscalerConfig:
    """Every setting from its flag; NATS and the ops server from their flag groups."""
    return from_args(
        AutoscalerConfig,
        args,
        nats=options_from_args(args, "infergate-autoscaler"),
        ops_host=args.ops_host,
        ops_port=args.ops_port,
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
        ports = {"api": autoscaler.secure_port, "ops": autoscaler.ops.port}
        report_ports("autoscaler", ports, args.port_file)
        try:
            await stop.wait()
        finally:
            await autoscaler.stop()

    return run(_main)


if __name__ == "__main__":
    raise SystemExit(main())
