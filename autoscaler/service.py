"""The autoscaler service in-process: NATS subscriptions, the HTTPS metrics API, the ops server.

``Autoscaler(config)`` with ``await start()`` / ``await stop()`` is what ``__main__`` runs
and what tests and the demo embed (port 0 = a free port, read back from ``.secure_port``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from kubernetes_asyncio.client import ApiClient
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry

from autoscaler.aggregate import Aggregator
from autoscaler.api import FrontProxyAuth, MetricsAPI
from autoscaler.authconfig import requestheader_from_cluster
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.models import ModelWatcher, names_from_files
from autoscaler.tls import self_signed, server_context
from shared import schemas
from shared.kube import api_client
from shared.natsconn import NatsOptions, connect, ensure_streams
from shared.ops import Health, OpsServer
from shared.service import Supervisor
from shared.subjects import untoken

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AutoscalerConfig:
    nats: NatsOptions = field(default_factory=NatsOptions)
    secure_host: str = "0.0.0.0"
    secure_port: int = 6443
    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    tls_hosts: list[str] = field(default_factory=list)  # SANs of a generated serving certificate
    requestheader_client_ca_file: str | None = None
    requestheader_allowed_names: list[str] = field(default_factory=list)
    requestheader_username_headers: list[str] = field(default_factory=lambda: ["X-Remote-User"])
    window: float = 30.0
    staleness: float = 10.0
    inflight_ttl: float = 300.0
    pools: list[str] = field(default_factory=list)  # "namespace/pool"; empty = every pool
    ops_host: str = "0.0.0.0"
    ops_port: int = 9095
    create_streams: bool = True
    # Read --requestheader-* from kube-system/extension-apiserver-authentication (flags still win).
    authentication_from_cluster: bool = False
    kubeconfig: str | None = None
    kube_api_url: str | None = None  # a plain URL (kubectl proxy, tests) instead of a kubeconfig
    # Client-facing model names: InferenceModel files, and/or InferenceModels watched in Kubernetes.
    model_files: list[str] = field(default_factory=list)
    watch_inference_models: bool = False
    namespaces: list[str] = field(default_factory=list)  # of the watch; empty = all


class Autoscaler:
    def __init__(self, config: AutoscalerConfig) -> None:
        self.config = config
        self.aggregator = Aggregator(
            window=config.window, staleness=config.staleness, inflight_ttl=config.inflight_ttl
        )
        self.registry = CollectorRegistry()
        self.metrics = AutoscalerMetrics(self.registry, self.aggregator)
        self.health = Health()
        self.health.add_check("nats", lambda: self._nc is not None and self._nc.is_connected)
        self.health.add_check("subscribed", lambda: self._subscribed)
        self.ops = OpsServer(config.ops_host, config.ops_port, self.registry, self.health)
        self.supervisor = Supervisor("autoscaler")
        self._endpoint_decoder = schemas.endpoint_decoder(lambda data, exc: self._bad("endpoints", exc))
        self._event_decoder = schemas.event_decoder(lambda data, exc: self._bad("events", exc))
        self._nc: NATS | None = None
        self._subs: list = []
        self._subscribed = False
        self._runner: web.AppRunner | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._kube: ApiClient | None = None
        self.model_watcher: ModelWatcher | None = None
        self.secure_port = config.secure_port
        self.ca_file: str | None = None  # the CA of a generated serving certificate

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect (retrying until NATS answers or ``stop`` is set), subscribe, then serve."""
        cfg = self.config
        self._nc = await connect(cfg.nats, stop=stop)
        js = self._nc.jetstream()
        subjects = cfg.nats.subjects
        if cfg.create_streams:
            await ensure_streams(js, subjects)
        pools = [p.split("/", 1) for p in cfg.pools]
        endpoint_subjects = [subjects.endpoints_of_pool(ns, p) for ns, p in pools] or [
            subjects.all_endpoints()
        ]
        event_subjects = [subjects.events_of_pool(ns, p) for ns, p in pools] or [subjects.all_events()]
        for subject in endpoint_subjects:
            # Last value per endpoint first (the bootstrap), then live updates.
            self._subs.append(
                await js.subscribe(
                    subject,
                    cb=self._on_endpoint,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                )
            )
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=cfg.window)
        for subject in event_subjects:
            # Replaying the last window rebuilds the rates and most of the in-flight set.
            self._subs.append(
                await js.subscribe(
                    subject,
                    cb=self._on_event,
                    ordered_consumer=True,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start),
                )
            )
        self._subscribed = True
        self.supervisor.spawn("housekeeping", self._housekeeping)
        if cfg.model_files:
            self.aggregator.declare_names(await asyncio.to_thread(names_from_files, cfg.model_files))
        if cfg.watch_inference_models:
            watcher = self.model_watcher = ModelWatcher(
                await self._kube_api(), cfg.namespaces, self.aggregator.declare_names
            )
            for i, lw in enumerate(watcher.watchers):
                self.supervisor.spawn(f"inferencemodels-{i}", lw.run)
            self.health.add_check("inferencemodels", watcher.is_synced)
        if cfg.authentication_from_cluster:
            await self._load_cluster_authentication()
        await self._start_api()
        await self.ops.start()
        log.info(
            "autoscaler started",
            extra={"secure_port": self.secure_port, "ops_port": self.ops.port, "subjects": endpoint_subjects},
        )

    async def stop(self) -> None:
        self._subscribed = False
        await self.supervisor.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ops.stop()
        if self._kube is not None:
            await self._kube.close()
            self._kube = None
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be gone
                pass
        self._subs.clear()
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def _housekeeping(self) -> None:
        """Expire in-flight entries and trim windows even when nobody reads the metrics (bounded memory)."""
        while True:
            await asyncio.sleep(min(5.0, self.config.window / 4))
            self.aggregator.housekeep()

    async def _load_cluster_authentication(self) -> None:
        cfg = self.config
        found = await requestheader_from_cluster(await self._kube_api())
        if found is None:  # fail closed: serving the API open was not what was asked for
            raise RuntimeError(
                "--authentication-from-cluster: kube-system/extension-apiserver-authentication has no "
                "requestheader-client-ca-file (is the aggregation layer enabled?)"
            )
        if not cfg.requestheader_client_ca_file:
            path = self._tmpdir() / "requestheader-client-ca.crt"
            await asyncio.to_thread(path.write_text, found.client_ca_pem)
            cfg.requestheader_client_ca_file = str(path)
            cfg.requestheader_allowed_names = cfg.requestheader_allowed_names or found.allowed_names
            cfg.requestheader_username_headers = found.username_headers
        log.info(
            "front-proxy authentication from the cluster",
            extra={"allowed_names": cfg.requestheader_allowed_names},
        )

    async def _kube_api(self) -> ApiClient:
        if self._kube is None:
            self._kube = await api_client(self.config.kubeconfig, host=self.config.kube_api_url)
        return self._kube

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="infergate-autoscaler-")
        return Path(self._tmp.name)

    async def _start_api(self) -> None:
        cfg = self.config
        auth = None
        if cfg.requestheader_client_ca_file:
            auth = FrontProxyAuth(
                list(cfg.requestheader_allowed_names), list(cfg.requestheader_username_headers)
            )
        api = MetricsAPI(
            self.aggregator,
            auth=auth,
            ready=self.health.ready,
            on_request=lambda code: self.metrics.api_requests.labels(str(code)).inc(),
        )
        self._runner = web.AppRunner(api.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            cfg.secure_host,
            cfg.secure_port,
            ssl_context=await asyncio.to_thread(self._ssl_context),
            reuse_address=True,
        )
        await site.start()
        if cfg.secure_port == 0:
            self.secure_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _ssl_context(self) -> ssl.SSLContext:
        cfg = self.config
        cert, key = cfg.tls_cert_file, cfg.tls_private_key_file
        if not cert:
            hosts = cfg.tls_hosts or ["localhost", "127.0.0.1", socket.gethostname()]
            cert, key, self.ca_file = self_signed(self._tmpdir(), hosts)
            log.info(
                "generated a self-signed serving certificate", extra={"hosts": hosts, "ca": self.ca_file}
            )
        return server_context(cert, key or cert, cfg.requestheader_client_ca_file)

    # ---- bus callbacks ----------------------------------------------------------------------

    def _bad(self, stream: str, exc: Exception) -> None:
        self.metrics.decode_failures.labels(stream).inc()
        log.warning("undecodable bus message", extra={"stream": stream, "error": str(exc)})

    async def _on_endpoint(self, msg: Msg) -> None:
        decoded = self._endpoint_decoder.decode(msg.data)
        if decoded is None:
            return
        self.aggregator.on_endpoint(decoded)
        self.metrics.messages.labels(decoded.__struct_config__.tag).inc()

    async def _on_event(self, msg: Msg) -> None:
        decoded = self._event_decoder.decode(msg.data)
        if decoded is None:
            return
        tokens = msg.subject.split(".")
        namespace, pool = (untoken(tokens[-4]), untoken(tokens[-3])) if len(tokens) >= 5 else ("", "")
        self.aggregator.on_event(decoded, namespace=namespace, pool=pool)
        self.metrics.messages.labels(decoded.__struct_config__.tag).inc()
