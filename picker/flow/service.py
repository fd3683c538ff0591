"""Wiring flow control into a picker: settings (profile + flags), controller, runner, metrics.

::

    flow = build_flow(cfg, profile, registry)     # None when flow control is off
    director = Director(..., flow=flow.runner if flow else None)
    flow.start(supervisor)                        # the dispatch loop
    flow.start_pool(bus, supervisor)              # pool-wide shares over NATS (optional)
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from picker.scheduling.params import ConfigError

from .config import DETECTORS, FAIRNESS, FlowConfig
from .controller import FlowController
from .detectors import build_gate
from .metrics import FlowMetrics
from .runner import FlowRunner

__all__ = ["FlowControl", "build_flow", "flow_settings"]

log = logging.getLogger(__name__)


def flow_settings(cfg: Any, profile: Any) -> FlowConfig | None:
    """The profile's ``flow_control`` block with the ``--flow-control*`` flags over it; None when off."""
    fc: FlowConfig = getattr(profile, "flow", None) or FlowConfig()
    mode = getattr(cfg, "flow_control", "profile")
    if mode == "on":
        fc = fc.with_overrides(enabled=True)
    elif mode == "off":
        fc = fc.with_overrides(enabled=False)
    fc = fc.with_overrides(
        ttl_s=getattr(cfg, "flow_control_ttl", None),
        scale_from_zero_ttl_s=getattr(cfg, "flow_control_scale_from_zero_ttl", None),
        fairness=getattr(cfg, "flow_control_fairness", None),
        detector=getattr(cfg, "flow_control_detector", None),
        max_requests_per_pod=getattr(cfg, "flow_control_max_requests_per_pod", None),
    )
    if fc.fairness not in FAIRNESS:
        raise ConfigError("--flow-control-fairness", f"must be one of {', '.join(FAIRNESS)}")
    if fc.detector not in DETECTORS:
        raise ConfigError("--flow-control-detector", f"must be one of {', '.join(DETECTORS)}")
    if fc.detector == "concurrency" and not (fc.max_requests_per_pod or fc.max_tokens_per_pod):
        raise ConfigError("--flow-control-detector", "concurrency needs --flow-control-max-requests-per-pod")
    return fc if fc.enabled else None


class FlowControl:
    """One picker's flow control: the controller, its asyncio runner, its metrics, pool-wide shares."""

    def __init__(
        self, fc: FlowConfig, profile: Any, registry: CollectorRegistry | None, pool: str, replica: str
    ) -> None:
        self.config = fc
        self.replica = replica
        self.metrics = FlowMetrics(registry, pool)
        self.runner = FlowRunner(None)  # type: ignore[arg-type]  (controller set below)
        self.shares: Any = None
        share = token_share = None
        if fc.pool_wide:
            from .pool import Shares

            self.shares = Shares(replica, fc.publish_interval_s)
            share, token_share = self.shares.requests, self.shares.tokens
        gate = build_gate(fc, own=self.runner.own_load, share=share, token_share=token_share)
        self.controller = FlowController(
            fc,
            profile.scheduler,
            profile.state,
            gate=gate,
            metrics=self.metrics,
            peer_top=self.shares.peer_top if self.shares is not None else None,
            replicas=self.shares.replicas if self.shares is not None else None,
        )
        self.runner.controller = self.controller
        self.metrics.add_gauges(self.controller.sizes, self.controller.saturation)
        self.coordinator: Any = None

    def start(self, supervisor: Any) -> None:
        supervisor.spawn("flow-control", self.runner.run)

    def start_pool(self, bus: Any, subjects: Any, namespace: str, pool: str, supervisor: Any) -> None:
        """Pool-wide: publish this replica's demand and service, follow the peers' (picker.flow.pool)."""
        if self.shares is None:
            return
        from .pool import PoolCoordinator

        self.coordinator = PoolCoordinator(
            bus, subjects, namespace, pool, self.replica, self.shares, self.controller, self.runner
        )
        if self.config.publish_on_rise:
            self.controller.on_top_rise = self.coordinator.top_rose
        supervisor.spawn("flow-control-pool", self.coordinator.run)


def build_flow(
    cfg: Any, profile: Any, registry: CollectorRegistry | None, replica: str = ""
) -> FlowControl | None:
    fc = flow_settings(cfg, profile)
    if fc is None:
        return None
    log.info(
        "flow control on",
        extra={"fairness": fc.fairness, "ordering": fc.ordering, "detector": fc.detector, "ttl_s": fc.ttl_s},
    )
    return FlowControl(fc, profile, registry, cfg.pool_name, replica or getattr(cfg, "replica_name", ""))
