"""The collector's settings, each declared once.

Every field made with :func:`~shared.config.setting` is also a flag of
``infergate-collector`` and an ``INFERGATE_<FLAG>`` variable: name, type, default, group and
help are written here only (``collector/__main__.py`` derives the parser and the conversion).
Plain fields come from other flag groups (NATS, ops server) or from code and tests.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from collector.scrape_rate import effective_idle_interval, validate_idle_interval
from collector.targets import Target
from shared.config import setting
from shared.natsconn import NatsOptions, StreamSettings

DEFAULT_OPS_PORT = 9091
IDENTITY, DISCOVERY, SCRAPING, PUBLISHING = "identity", "discovery", "scraping", "publishing"
ADAPTERS = "LoRA adapters"
KV_EVENTS = "KV-cache events"


def positive(text: str) -> float:
    """A flag value that must be > 0 (seconds)."""
    value = float(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {text}")
    return value


def comma_list(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


@dataclass
class CollectorConfig:
    """Everything a collector needs; the CLI flags map onto these fields one to one."""

    # identity
    node_name: str = setting(
        "",
        group=IDENTITY,
        cli_default_factory=lambda: os.environ.get("NODE_NAME", ""),
        help="this node's name (Kubernetes discovery watches pods with spec.nodeName=<it>; "
        "static targets with another node are skipped) [env fallback: NODE_NAME]",
    )
    collector_name: str = setting(
        "",
        group=IDENTITY,
        cli_default_factory=lambda: os.environ.get("POD_NAME") or os.environ.get("HOSTNAME", ""),
        help="this collector's name in snapshots (collector=<node>/<name>) "
        "[env fallback: POD_NAME, HOSTNAME]",
    )
    # discovery: "auto" = static when targets_file or targets are given, else kubernetes
    discovery: str = setting(
        "auto",
        group=DISCOVERY,
        choices=("auto", "kubernetes", "static"),
        help="where targets come from; auto = static when --targets-file/--target is given, else kubernetes",
    )
    targets_file: str | None = setting(
        None, group=DISCOVERY, help="YAML list of {pool, namespace, pod, address, node}"
    )
    # parsed by collector.targets.parse_target_flag in the CLI (a clear error per bad flag)
    targets: list[Target] = setting(
        default_factory=list,
        group=DISCOVERY,
        flag="--target",
        action="append",
        metavar="[NS/]POOL/POD=IP:PORT",
        help="a static target (repeatable; env: comma-separated)",
    )
    targets_poll_interval: float = setting(
        1.0, group=DISCOVERY, type=positive, help="seconds between targets-file checks"
    )
    kubeconfig: str | None = setting(
        None, group=DISCOVERY, help="kubeconfig file (default: in-cluster, then ~/.kube)"
    )
    kube_api_server: str | None = setting(
        None,
        group=DISCOVERY,
        help="plain http API server URL without auth (kubectl proxy, tests); overrides --kubeconfig",
    )
    namespaces: list[str] = setting(
        default_factory=list,
        group=DISCOVERY,
        type=comma_list,
        cli_default="",
        help="comma-separated namespaces to watch for InferencePools (empty = all)",
    )
    pool_api_version: str = setting(
        "v1",
        group=DISCOVERY,
        choices=("v1", "v1alpha2"),
        help="InferencePool API: v1 = inference.networking.k8s.io/v1, "
        "v1alpha2 = inference.networking.x-k8s.io/v1alpha2",
    )
    # scraping
    scrape_interval: float = setting(0.05, group=SCRAPING, type=positive, help="seconds between scrapes")
    scrape_timeout: float = setting(0.5, group=SCRAPING, type=positive, help="per-scrape timeout, seconds")
    scrape_jitter: float = setting(0.1, group=SCRAPING, help="random +/- fraction of the interval per scrape")
    # collector/scrape_rate.py: well under the pickers' 0.2 s staleness, since an idle
    # endpoint's metrics are as old as its last scrape. None = the default, 0.1 s, which turns
    # itself off when the scrape interval is already that long (no error for a slow setup).
    idle_scrape_interval: float | None = setting(
        None,
        group=SCRAPING,
        help="seconds between scrapes of an endpoint that showed no running or waiting request "
        "and no change for a few scrapes (any activity returns it to --scrape-interval); "
        "0 or the scrape interval turns it off; below 1 s; default 0.1 s (off when "
        "--scrape-interval is 0.1 s or more)",
    )
    unhealthy_after: int = setting(
        3,
        group=SCRAPING,
        help="consecutive failed scrapes before an endpoint is published as unhealthy",
    )
    metrics_path: str = setting("/metrics", group=SCRAPING, help="HTTP path of the model servers' metrics")
    max_page_bytes: int = setting(8 << 20, group=SCRAPING, help="reject larger /metrics pages")
    # How often to read /v1/models (the loaded LoRA adapters); 0 disables it.
    models_interval: float = setting(
        1.0,
        group=SCRAPING,
        help="seconds between reads of /v1/models (the loaded LoRA adapters); 0 disables them",
    )
    # publishing
    # Well under the scheduler's 200 ms staleness rule, so an idle pod's unchanged
    # metrics never read as stale (which would shed Sheddable requests for nothing).
    heartbeat_interval: float = setting(
        0.1,
        group=PUBLISHING,
        type=positive,
        help="republish an unchanged endpoint after this many seconds",
    )
    # LoRA adapters (collector/adapters.py): off unless a spec source is given
    adapters_file: str | None = setting(
        None,
        group=ADAPTERS,
        help="YAML of the desired LoRA adapters (shared/adapters.py); reloaded on change",
    )
    adapters_configmap: str | None = setting(
        None,
        group=ADAPTERS,
        metavar="NAMESPACE/NAME",
        help="ConfigMap whose adapters.yaml key holds the desired adapters (list+watch)",
    )
    adapter_sync_interval: float = setting(
        1.0, group=ADAPTERS, type=positive, help="seconds between adapter reconciliation passes"
    )
    adapter_slots: int = setting(
        0,
        group=ADAPTERS,
        help="adapters one server may hold (vLLM's --max-cpu-loras); 0 = the max_lora its metrics report",
    )
    adapter_drain: float = setting(
        2.0,
        group=ADAPTERS,
        help="seconds an adapter is hidden from served_models (pickers stop routing to it) before unload",
    )
    adapter_holder_ttl: float = setting(
        30.0,
        group=ADAPTERS,
        type=positive,
        help="seconds after which another collector's unconfirmed claim counts as dead",
    )
    # vLLM's KV-cache events, followed for the precise prefix path (collector/kvevents.py)
    kv_flush_interval: float = setting(
        0.02,
        group=KV_EVENTS,
        type=positive,
        help="seconds between a pod's KV block deltas on NATS (at most; none when nothing changed)",
    )
    kv_digest_interval: float = setting(
        1.0,
        group=KV_EVENTS,
        type=positive,
        help="seconds between a pod's full KV digests (the pickers' resync and liveness: keep it well "
        "under their 3 s staleness)",
    )
    # from the NATS flags (shared.natsconn)
    nats: NatsOptions = field(default_factory=NatsOptions)
    stream_settings: StreamSettings = field(default_factory=StreamSettings)
    # ops server (None = do not start one), from the ops flags (shared.ops)
    ops_host: str = "0.0.0.0"
    ops_port: int | None = DEFAULT_OPS_PORT

    def identity(self) -> str:
        name = self.collector_name or os.environ.get("HOSTNAME") or socket.gethostname()
        return f"{self.node_name or '-'}/{name}"

    def discovery_mode(self) -> str:
        if self.discovery != "auto":
            return self.discovery
        return "static" if (self.targets_file or self.targets) else "kubernetes"

    def idle_interval(self) -> float:
        """The idle scrape interval in force (0 = off): the setting, or its default."""
        return effective_idle_interval(self.scrape_interval, self.idle_scrape_interval)

    def validate(self) -> None:
        problems = []
        if self.scrape_interval <= 0:
            problems.append("scrape interval must be > 0")
        if self.idle_scrape_interval is not None:
            idle_problem = validate_idle_interval(self.scrape_interval, self.idle_scrape_interval)
            if idle_problem:
                problems.append(idle_problem)
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
        if self.adapters_configmap is not None and self.adapters_configmap.count("/") != 1:
            problems.append("--adapters-configmap must be NAMESPACE/NAME")
        if self.adapter_slots < 0 or self.adapter_drain < 0:
            problems.append("adapter slots and drain must be >= 0")
        if not 0 < self.kv_flush_interval <= self.kv_digest_interval:
            problems.append("KV flush interval must be > 0 and <= the KV digest interval")
        if self.discovery_mode() not in ("static", "kubernetes"):
            problems.append(f"unknown discovery mode {self.discovery!r}")
        if self.discovery_mode() == "kubernetes" and not self.node_name:
            problems.append("--node-name (or NODE_NAME) is required with Kubernetes discovery")
        if self.pool_api_version not in ("v1", "v1alpha2"):
            problems.append(f"pool API version must be v1 or v1alpha2, not {self.pool_api_version!r}")
        if problems:
            raise ValueError("; ".join(problems))
