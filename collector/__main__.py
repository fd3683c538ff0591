"""``infergate-collector`` / ``python -m collector``: the per-node metrics collector.

Every flag also reads ``INFERGATE_<FLAG>`` from the environment (see ``--help``);
``--node-name`` additionally falls back to ``NODE_NAME`` (the downward API convention)
and ``--collector-name`` to ``POD_NAME``/``HOSTNAME``. See collector/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from collector.config import DEFAULT_OPS_PORT, CollectorConfig
from collector.service import Collector
from collector.targets import TargetsError, parse_target_flag
from shared import natsconn
from shared.config import EnvArgumentParser, add_settings, from_args
from shared.log import add_logging_flags, setup_logging
from shared.ops import add_ops_flags
from shared.portfile import add_port_file_flag, report_ports
from shared.service import run

log = logging.getLogger("collector")


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(
        prog="infergate-collector",
        description="Scrape the vLLM servers on this node and publish their state on NATS.",
    )
    add_settings(p, CollectorConfig)
    natsconn.add_nats_flags(p)
    add_ops_flags(p, default_port=DEFAULT_OPS_PORT)
    add_logging_flags(p)
    add_port_file_flag(p)
    return p


def config_from_args(args: argparse.Namespace) -> CollectorConfig:
    """Every setting from its flag; the targets parsed one by one, NATS and ops from their groups."""
    node = args.node_name or os.environ.get("NODE_NAME", "")
    return from_args(
        CollectorConfig,
        args,
        node_name=node,
        targets=[parse_target_flag(spec) for spec in args.target],
        nats=natsconn.options_from_args(args, name=f"infergate-collector/{node or '-'}"),
        ops_host=args.ops_host,
        ops_port=args.ops_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("collector", args.log_level, args.log_format)
    try:
        config = config_from_args(args)
        config.validate()
    except (TargetsError, ValueError) as exc:
        parser.error(str(exc))

    async def _main(stop: asyncio.Event) -> None:
        collector = Collector(config)
        await collector.start()
        report_ports("collector", {"ops": collector.ops.port} if collector.ops else {}, args.port_file)
        try:
            await stop.wait()
        finally:
            await collector.stop()

    return run(_main)


if __name__ == "__main__":
    sys.exit(main())
