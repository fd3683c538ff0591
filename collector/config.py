"""The collector's settings: one dataclass, which the CLI flags map onto one to one."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from collector.targets import Target
from shared.natsconn import NatsOptions, StreamSettings

DEFAULT_OPS_PORT = 9091


@dataclass
class CollectorConfig:
    """Everything a collector needs; the CLI flags map onto these fields one to one."""

    node_name: str = ""
    collector_name: str = ""
    nats: NatsOptions = field(default_factory=NatsOptions)
    # discovery: "auto" = static when targets_file or targets are given, else kubernetes
    discovery: str = "auto"
    targets_file: str | None = None
    targets: list[Target] = field(default_factory=list)
    targets_poll_interval: float = 1.0
    kubeconfig: str | None = None
    kube_api_server: str | None = None
    namespaces: list[str] = field(default_factory=list)
    pool_api_version: str = "v1"
    # scraping
    scrape_interval: float = 0.05
    scrape_timeout: float = 0.5
    scrape_jitter: float = 0.1
    unhealthy_after: int = 3
    metrics_path: str = "/metrics"
    max_page_bytes: int = 8 << 20
    # How often to read /v1/models (the loaded LoRA adapters); 0 disables it.
    models_interval: float = 1.0
    # publishing
    # Well under the scheduler's 200 ms staleness rule, so an idle pod's unchanged
    # metrics never read as stale (which would shed Sheddable requests for nothing).
    heartbeat_interval: float = 0.1
    stream_settings: StreamSettings = field(default_factory=StreamSettings)
    # ops server (None = do not start one)
    ops_host: str = "0.0.0.0"
    ops_port: int | None = DEFAULT_OPS_PORT

    def identity(self) -> str:
        name = self.collector_name or os.environ.get("HOSTNAME") or socket.gethostname()
        return f"{self.node_name or '-'}/{name}"

    def discovery_mode(self) -> str:
        if self.discovery != "auto":
            return self.discovery
        return "static" if (self.targets_file or self.targets) else "kubernetes"

    def validate(self) -> None:
        problems = []
        if self.scrape_interval <= 0:
            problems.append("scrape interval must be > 0")
        if self.scrape_timeout <= 0:
            problems.append("scrape timeout must be > 0")
        if not 0 <= self.scrape_jitter < 1:
            problems.append("scrape jitter must be in [0, 1)")
        if self.unhealthy_after < 1:
            problems.append("unhealthy-after must be >= 1")
        if self.heartbeat_interval <= 0:
            problems.append("heartbeat interval must be > 0")
        if self.models_interval < 0:
            problems.append("models interval must be >= 0")
        if self.discovery_mode() not in ("static", "kubernetes"):
            problems.append(f"unknown discovery mode {self.discovery!r}")
        if self.discovery_mode() == "kubernetes" and not self.node_name:
            problems.append("--node-name (or NODE_NAME) is required with Kubernetes discovery")
        if self.pool_api_version not in ("v1", "v1alpha2"):
            problems.append(f"pool API version must be v1 or v1alpha2, not {self.pool_api_version!r}")
        if problems:
            raise ValueError("; ".join(problems))
