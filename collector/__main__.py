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
from shared.config import EnvArgumentParser
from shared.log import add_logging_flags, setup_logging
from shared.ops import add_ops_flags
from shared.service import run

log = logging.getLogger("collector")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {text}")
    return value


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(
        prog="infergate-collector",
        description="Scrape the vLLM servers on this node and publish their state on NATS.",
    )
    ident = p.add_argument_group("identity")
    ident.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME", ""),
        help="this node's name (Kubernetes discovery watches pods with spec.nodeName=<it>; "
        "static targets with another node are skipped) [env fallback: NODE_NAME]",
    )
    ident.add_argument(
        "--collector-name",
        default=os.environ.get("POD_NAME") or os.environ.get("HOSTNAME", ""),
        help="this collector's name in snapshots (collector=<node>/<name>) "
        "[env fallback: POD_NAME, HOSTNAME]",
    )

    disc = p.add_argument_group("discovery")
    disc.add_argument(
        "--discovery",
        default="auto",
        choices=["auto", "kubernetes", "static"],
        help="where targets come from; auto = static when --targets-file/--target is given, else kubernetes",
    )
    disc.add_argument(
        "--targets-file", default=None, help="YAML list of {pool, namespace, pod, address, node}"
    )
    disc.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="[NS/]POOL/POD=IP:PORT",
        help="a static target (repeatable; env: comma-separated)",
    )
    disc.add_argument(
        "--targets-poll-interval", type=_positive, default=1.0, help="seconds between targets-file checks"
    )
    disc.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube)"
    )
    disc.add_argument(
        "--kube-api-server",
        default=None,
        help="plain http API server URL without auth (kubectl proxy, tests); overrides --kubeconfig",
    )
    disc.add_argument(
        "--namespaces",
        default="",
        help="comma-separated namespaces to watch for InferencePools (empty = all)",
    )
    disc.add_argument(
        "--pool-api-version",
        default="v1",
        choices=["v1", "v1alpha2"],
        help="InferencePool API: v1 = inference.networking.k8s.io/v1, "
        "v1alpha2 = inference.networking.x-k8s.io/v1alpha2",
    )

    scrape = p.add_argument_group("scraping")
    scrape.add_argument("--scrape-interval", type=_positive, default=0.05, help="seconds between scrapes")
    scrape.add_argument("--scrape-timeout", type=_positive, default=0.5, help="per-scrape timeout, seconds")
    scrape.add_argument(
        "--scrape-jitter", type=float, default=0.1, help="random +/- fraction of the interval per scrape"
    )
    scrape.add_argument(
        "--unhealthy-after",
        type=int,
        default=3,
        help="consecutive failed scrapes before an endpoint is published as unhealthy",
    )
    scrape.add_argument("--metrics-path", default="/metrics", help="HTTP path of the model servers' metrics")
    scrape.add_argument("--max-page-bytes", type=int, default=8 << 20, help="reject larger /metrics pages")
    scrape.add_argument(
        "--models-interval",
        type=float,
        default=1.0,
        help="seconds between reads of /v1/models (the loaded LoRA adapters); 0 disables them",
    )

    pub = p.add_argument_group("publishing")
    pub.add_argument(
        "--heartbeat-interval",
        type=_positive,
        default=0.1,
        help="republish an unchanged endpoint after this many seconds",
    )
    natsconn.add_nats_flags(p)
    add_ops_flags(p, default_port=DEFAULT_OPS_PORT)
    add_logging_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> CollectorConfig:
    node = args.node_name or os.environ.get("NODE_NAME", "")
    targets = []
    for spec in args.target:
        targets.append(parse_target_flag(spec))
    opts = natsconn.options_from_args(args, name=f"infergate-collector/{node or '-'}")
    return CollectorConfig(
        node_name=node,
        collector_name=args.collector_name,
        nats=opts,
        discovery=args.discovery,
        targets_file=args.targets_file,
        targets=targets,
        targets_poll_interval=args.targets_poll_interval,
        kubeconfig=args.kubeconfig,
        kube_api_server=args.kube_api_server,
        namespaces=[n.strip() for n in args.namespaces.split(",") if n.strip()],
        pool_api_version=args.pool_api_version,
        scrape_interval=args.scrape_interval,
        scrape_timeout=args.scrape_timeout,
        scrape_jitter=args.scrape_jitter,
        unhealthy_after=args.unhealthy_after,
        metrics_path=args.metrics_path,
        max_page_bytes=args.max_page_bytes,
        heartbeat_interval=args.heartbeat_interval,
        models_interval=args.models_interval,
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
        try:
            await stop.wait()
        finally:
            await collector.stop()

    return run(_main)


if __name__ == "__main__":
    sys.exit(main())
