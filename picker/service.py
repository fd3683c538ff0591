"""The picker as an object: ``Picker(config)``, ``await start()``, ``await stop()``.

Tests, the demo and the CLI all run the same object; ports given as 0 are bound to free
ports, readable afterwards (``grpc_port``, ``health_port``, ``metrics_port``). It wires:

* the ext_proc gRPC server (plaintext, or TLS with ``secure_serving``: then the gRPC
  server listens on a private Unix socket behind :class:`~picker.tlsfront.TlsFront`,
  which accepts clients without ALPN, as Envoy's health checker is), which also
  serves ``grpc.health.v1`` (upstream's Envoy config health-checks the ext_proc port);
* a separate gRPC health server (``grpc.health.v1``) on the health port: the same
  statuses, from the same servicer;
* the ops HTTP server (``/metrics``, ``/healthz``, ``/readyz``);
* the pool view fed by NATS (or fed in-process when ``config.nats`` is None);
* the InferenceModel source (none, YAML files, or Kubernetes).

Ready means: the view has bootstrapped (every endpoint's last value consumed) and the
configuration has loaded once. Health services ``""``, ``readiness`` and
``envoy.service.ext_proc.v3.ExternalProcessor`` are SERVING exactly while ready;
``liveness`` is SERVING from start to stop (a picker waiting for NATS is alive).

``stop()`` is graceful: health goes NOT_SERVING, no new streams are accepted, in-flight
streams get ``grace_period`` to finish, and whatever is still in flight after that is
released from the accounting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry

from shared.ops import Health, OpsServer
from shared.service import Supervisor

from .config import PickerConfig
from .director import Director
from .extproc import ExtProcServicer
from .flow.service import build_flow
from .hooks import EventSink
from .kvfeed import KVFeed, attach_precise, precise_scorers, register_kv_metrics
from .latency.metrics import register_latency_metrics
from .metrics import PickerMetrics
from .models import ModelTable
from .protocol import EXT_PROC_SERVICE, HEALTH_LIVENESS, HEALTH_READINESS
from .scheduling import Profile, build_profile
from .scheduling.api import Scheduler
from .scheduling.kvindex import PreciseIndex
from .sources import FileSource, KubeSource, StaticSource
from .view import NatsFeed, PoolView

__all__ = ["Picker", "make_profile"]

log = logging.getLogger(__name__)

# Services that follow readiness; liveness follows the process.
_READY_SERVICES = ("", HEALTH_READINESS, EXT_PROC_SERVICE)


def _replica_of(cfg: PickerConfig) -> str:
    sharing = cfg.sharing
    return sharing.replica if sharing is not None and getattr(sharing, "replica", "") else cfg.replica_name


def make_profile(profile: str, config_path: str | None = None) -> Profile:
    """The scheduling package's profile (pool state, admission, scheduler), from the profiles file."""
    return build_profile(profile, config_path)


class Picker:
    def __init__(
        self,
        config: PickerConfig | None = None,
        *,
        scheduler: Scheduler | None = None,
        profile: Profile | None = None,
        sink: EventSink | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = cfg = config or PickerConfig()
        # The profile's pool state, admission and scheduler; a given scheduler replaces its selection.
        self.profile = profile or make_profile(cfg.profile, cfg.scheduler_config)
        if scheduler is not None:
            self.profile.scheduler = scheduler
        self.state = self.profile.state
        self.scheduler: Scheduler = self.profile.scheduler
        self.metrics = PickerMetrics(
            registry,
            model_admit=cfg.model_metric_label_limit,
            fairness_admit=cfg.fairness_id_metric_label_limit,
        )
        self.registry = self.metrics.registry
        self.view = PoolView(
            cfg.pool_namespace, cfg.pool_name, self.state, staleness=cfg.metrics_staleness_threshold
        )
        self.models = ModelTable([], cfg.pool_name, cfg.unknown_model_policy)
        # Flow control (picker.flow): None unless the profile or --flow-control turns it on.
        self.flow = build_flow(cfg, self.profile, self.registry, _replica_of(cfg))
        self.director = Director(
            view=self.view,
            admission=self.profile.admission,
            scheduler=self.scheduler,
            models=self.models,
            metrics=self.metrics,
            sink=sink,
            replica=cfg.replica_name,
            max_body_bytes=cfg.max_body_bytes,
            max_request_headers=cfg.max_request_headers,
            is_ready=self.is_ready,
            conformance_hooks=cfg.conformance_test_hooks,
            destination_header_list=cfg.destination_header_list,
            flow=self.flow.runner if self.flow is not None else None,
        )
        self.metrics.add_pool_collector(cfg.pool_name, self.view.stats, self._view_counters, self.view.list)
        self.metrics.add_tables(self.state, self.director)
        # progressive rollouts (picker/rollout): acts only on rules marked for one
        self.rollout: Any = None
        if cfg.nats is not None:
            from .rollout import RolloutController

            self.rollout = RolloutController(
                cfg.pool_namespace, cfg.pool_name, cfg.replica_name, self.registry
            )
        # Precise prefix (picker/kvfeed.py): this picker's own index, fed from the KV subjects.
        self.kv_index = PreciseIndex()
        self.kv_feed: KVFeed | None = None
        if attach_precise(self.profile, self.kv_index):
            register_kv_metrics(self.registry, self.profile, self.kv_index)
        register_latency_metrics(self.registry, cfg.pool_name, self.state)  # empty unless a profile learns
        if cfg.kube or cfg.kubeconfig or cfg.kube_host:
            self.source: Any = KubeSource(cfg, self._set_models)
        elif cfg.config_files:
            self.source = FileSource(cfg, self._set_models)
        else:
            self.source = StaticSource(cfg, self._set_models)
        self.feed: NatsFeed | None = None
        self.sharing: Any = None
        self._explicit_sink = sink is not None
        self._share = cfg.nats is not None and cfg.sharing is not None and cfg.sharing.enabled
        if cfg.nats is None:
            self.view.bootstrapped = True  # fed in-process (tests, benchmarks)
        self.health = Health()
        self.health.add_check("view", lambda: self.view.bootstrapped)
        self.health.add_check("config", lambda: bool(self.source.loaded))
        if self._share:
            self.health.add_check("peers", lambda: self.sharing is not None and self.sharing.is_ready())
        self.servicer = ExtProcServicer(self.director, cfg.default_body_mode)
        self.supervisor = Supervisor("picker")
        self._stop = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._health_servicer: Any = None
        self._tls_front: Any = None
        self._socket_dir: str | None = None
        self._ops: OpsServer | None = None
        self._serving: bool | None = None
        self.grpc_port = cfg.grpc_port
        self.health_port = cfg.grpc_health_port
        self.metrics_port = cfg.metrics_port
        self.certificate: bytes | None = None
        self.stopped = asyncio.Event()
        self.ready_event = asyncio.Event()

    # -- wiring -----------------------------------------------------------------------------
    @property
    def sink(self) -> EventSink | None:
        return self.director.sink

    @sink.setter
    def sink(self, value: EventSink | None) -> None:
        """Peer sharing attaches its EventSink here (before or after ``start``)."""
        self.director.sink = value

    def _set_models(self, table: ModelTable) -> None:
        if getattr(self, "rollout", None) is not None:
            self.rollout.apply(table)  # the rollouts' weights, before the table serves
        self.models = table
        if hasattr(self, "director"):
            self.director.models = table
        names_of = getattr(table, "label_names", None)
        self.metrics.set_known_models(names_of() if names_of is not None else table.by_model)

    def _view_counters(self) -> dict:
        return {
            "dropped": dict(self.view.dropped),
            "decode_failures": self.view.decoder.failures,
            "accepted": self.view.accepted,
        }

    def is_ready(self) -> bool:
        if self._share and (self.sharing is None or not self.sharing.is_ready()):
            return False
        return self.view.bootstrapped and bool(self.source.loaded) and not self._stop.is_set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        if isinstance(self.source, FileSource):
            self.source._apply(await asyncio.to_thread(self.source._read))
        # ext_proc server: a small message size limit is not wanted (bodies of many MB).
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(options=options)
        ep_grpc.add_ExternalProcessorServicer_to_server(self.servicer, server)
        # One health servicer, on the ext_proc port and on the health port alike.
        self._health_servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, server)
        if cfg.secure_serving:
            from .tls import key_pair
            from .tlsfront import TlsFront, server_context

            self.certificate, key = key_pair(cfg.cert_file, cfg.key_file)
            self._socket_dir = tempfile.mkdtemp(prefix="infergate-picker-")
            backend = os.path.join(self._socket_dir, "extproc.sock")
            server.add_insecure_port(f"unix:{backend}")
            await server.start()
            self._server = server
            front = TlsFront(server_context(self.certificate, key, cfg.client_ca_file), backend)
            self._tls_front = await front.start(cfg.grpc_host, cfg.grpc_port)
            self.grpc_port = front.port
        else:
            self.grpc_port = server.add_insecure_port(f"{cfg.grpc_host}:{cfg.grpc_port}")
            await server.start()
            self._server = server

        hs = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, hs)
        self.health_port = hs.add_insecure_port(f"{cfg.grpc_host}:{cfg.grpc_health_port}")
        await hs.start()
        self._health_server = hs
        await self._health_servicer.set(HEALTH_LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self._set_serving(False)

        self._ops = OpsServer(cfg.metrics_host, cfg.metrics_port, self.registry, self.health)
        await self._ops.start()
        self.metrics_port = self._ops.port

        if cfg.nats is not None:
            self.feed = NatsFeed(self.view, cfg.nats, self._stop)
            self.supervisor.spawn("nats-feed", self.feed.run)
            if self._share:
                self.supervisor.spawn("sharing-wire", self._wire_sharing, restart=False)
            from .rollout import wiring as rollout_wiring

            self.supervisor.spawn("rollout", lambda: rollout_wiring.run(self, self.rollout))
            if precise_scorers(self.profile):
                self.supervisor.spawn("kv-feed", self._wire_kv, restart=False)
        if not isinstance(self.source, StaticSource):
            self.supervisor.spawn("config", self.source.run)
        self.supervisor.spawn("health", self._health_loop)
        if self.flow is not None:
            self.flow.start(self.supervisor)
        log.info(
            "picker started",
            extra={
                "pool": f"{cfg.pool_namespace}/{cfg.pool_name}",
                "grpc_port": self.grpc_port,
                "health_port": self.health_port,
                "metrics_port": self.metrics_port,
                "tls": cfg.secure_serving,
                "mtls": bool(cfg.client_ca_file),
                "scheduler": getattr(self.scheduler, "name", type(self.scheduler).__name__),
            },
        )

    async def _wire_sharing(self) -> None:
        """Peer sharing rides on the view's NATS connection, once it is up."""
        from .sharing.service import PeerSharing

        assert self.feed is not None
        await self.feed.connected_event.wait()
        cfg = self.config
        self.sharing = PeerSharing(
            self.feed.bus,
            cfg.pool_namespace,
            cfg.pool_name,
            cfg.sharing,
            self.state,
            registry=self.registry,
        )
        self.sharing.start(self.supervisor)
        if not self._explicit_sink:
            self.sink = self.sharing.sink
        if self.flow is not None:  # pool-wide flow control rides on the same connection
            bus = self.feed.bus
            self.flow.start_pool(bus, bus.subjects, cfg.pool_namespace, cfg.pool_name, self.supervisor)
        log.info("peer sharing started", extra={"replica": cfg.sharing.replica})

    async def _wire_kv(self) -> None:
        """The precise index rides on the view's NATS connection, once it is up."""
        assert self.feed is not None
        await self.feed.connected_event.wait()
        assert self.feed.bus is not None
        cfg = self.config
        self.kv_feed = KVFeed(self.feed.bus, cfg.pool_namespace, cfg.pool_name, self.kv_index)
        await self.kv_feed.start()
        await self.kv_feed.run()  # until cancelled

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the health loop saw the picker ready (raises TimeoutError)."""
        await asyncio.wait_for(self.ready_event.wait(), timeout)

    async def _set_serving(self, serving: bool) -> None:
        if self._serving is serving or self._health_servicer is None:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in _READY_SERVICES:
            await self._health_servicer.set(name, status)
        log.info("health status", extra={"serving": serving})

    async def _health_loop(self) -> None:
        while True:
            ready = self.is_ready()
            if ready:
                self.ready_event.set()
            else:
                self.ready_event.clear()
            await self._set_serving(ready)
            await asyncio.sleep(0.05)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: NOT_SERVING, refuse new streams, let in-flight ones finish (bounded)."""
        if self.stopped.is_set():
            return
        self._stop.set()
        grace = self.config.grace_period if grace is None else grace
        await self._set_serving(False)
        if self._health_servicer is not None:
            await self._health_servicer.set(HEALTH_LIVENESS, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._tls_front is not None:
            await self._tls_front.stop()  # no new TLS connections; open ones drain below
        if self._server is not None:
            await self._server.stop(grace)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self.director.close_all(499)
        if self.sharing is not None:
            try:
                await asyncio.wait_for(self.sharing.close(), 5)
            except Exception:
                log.exception("peer sharing did not close cleanly")
        await self.supervisor.close()
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._ops is not None:
            await self._ops.stop()
        self.stopped.set()
        log.info("picker stopped")

    async def __aenter__(self) -> Picker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(grace=1.0)
