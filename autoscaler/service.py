"""The autoscaler service in-process: bus feeds, the HTTPS metrics API, the ops server.

The bus side is :mod:`shared.feed`'s, the same the pickers use: a
:class:`~shared.feed.LastValueFeed` per endpoint subject (bootstrap from the stored last
values, re-subscribed after every reconnect) and an :class:`~shared.feed.EventFeed` per
event subject (live, plus the last ``window`` replayed at start and the gap after every
reconnect), both feeding the :class:`~autoscaler.aggregate.Aggregator`. Ready once every
feed has bootstrapped.

``Autoscaler(config)`` with ``await start()`` / ``await stop()`` is what ``__main__`` runs
and what tests and the demo embed (port 0 = a free port, read back from ``.secure_port``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import tempfile
from pathlib import Path

import msgspec
from aiohttp import web
from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry

from autoscaler.aggregate import Aggregator
from autoscaler.api import FrontProxyAuth, MetricsAPI
from autoscaler.authconfig import requestheader_from_cluster
from autoscaler.config import AutoscalerConfig
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.models import ModelWatcher, names_from_files
from autoscaler.tls import self_signed, server_context
from shared import schemas
from shared.feed import EventFeed, LastValueFeed, Source
from shared.flowmsg import decode_flow
from shared.kube import api_client
from shared.natsbus import NatsBus
from shared.ops import Health, OpsServer
from shared.service import Supervisor
from shared.subjects import Origin

log = logging.getLogger(__name__)


class Autoscaler:
    def __init__(self, config: AutoscalerConfig) -> None:
        self.config = config
        self.aggregator = Aggregator(
            window=config.window, staleness=config.staleness, inflight_ttl=config.inflight_ttl
        )
        self.registry = CollectorRegistry()
        self.metrics = AutoscalerMetrics(self.registry, self.aggregator)
        self.health = Health()
        self.health.add_check("nats", lambda: self.bus is not None and self.bus.connected)
        self.health.add_check("subscribed", self._subscribed)
        self.ops = OpsServer(config.ops_host, config.ops_port, self.registry, self.health)
        self.supervisor = Supervisor("autoscaler")
        self._endpoint_decoder = schemas.endpoint_decoder(lambda data, exc: self._bad("endpoints", exc))
        self._event_decoder = schemas.event_decoder(lambda data, exc: self._bad("events", exc))
        self.bus: NatsBus | None = None
        self.feeds: list[LastValueFeed | EventFeed] = []
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
        bus = self.bus = await NatsBus.connect(cfg.nats, stop=stop)
        subjects = bus.subjects
        pools = [p.split("/", 1) for p in cfg.pools]
        endpoint_subjects = [subjects.endpoints_of_pool(ns, p) for ns, p in pools] or [
            subjects.all_endpoints()
        ]
        event_subjects = [subjects.events_of_pool(ns, p) for ns, p in pools] or [subjects.all_events()]
        if cfg.create_streams:
            await bus.ensure_streams()
        for i, subject in enumerate(endpoint_subjects):
            feed = LastValueFeed(bus, subject, self._on_endpoint, manage_streams=cfg.create_streams)
            self.feeds.append(feed)
            self.supervisor.spawn(f"endpoints-{i}", feed.run)
        for i, subject in enumerate(event_subjects):
            # Replaying the last window rebuilds the rates and most of the in-flight set.
            events = EventFeed(
                bus,
                subject,
                self._on_event,
                window_s=cfg.window,
                manage_streams=cfg.create_streams,
                on_replay=self._on_replay,
            )
            self.feeds.append(events)
            self.supervisor.spawn(f"events-{i}", events.run)
        flow_subjects = [subjects.flow_of_pool(ns, p) for ns, p in pools] or [subjects.all_flows()]
        for subject in flow_subjects:  # flow control's queues: infergate-flow-control-queue-length
            await bus.subscribe(subject, self._on_flow)  # closed with the bus
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
        await self.supervisor.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ops.stop()
        if self._kube is not None:
            await self._kube.close()
            self._kube = None
        for feed in self.feeds:
            if isinstance(feed, EventFeed):
                await feed.close()
        self.feeds.clear()
        if self.bus is not None:
            await self.bus.close()
            self.bus = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _subscribed(self) -> bool:
        """Every feed has bootstrapped: endpoint last values read, the event window replayed."""
        return bool(self.feeds) and all(
            (f.ready if isinstance(f, EventFeed) else f.bootstrapped).is_set() for f in self.feeds
        )

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

    def _on_flow(self, subject: str, data: bytes) -> None:
        where = self.bus.subjects.parse_flow(subject) if self.bus is not None else None
        if where is None:
            return
        try:
            msg = decode_flow(data)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            self._bad("flow", exc)
            return
        self.aggregator.on_flow(*where, msg.queued)

    def _on_endpoint(self, subject: str, data: bytes) -> None:
        decoded = self._endpoint_decoder.decode(data)
        if decoded is None:
            return
        self.aggregator.on_endpoint(decoded)
        self.metrics.messages.labels(decoded.__struct_config__.tag).inc()

    def _on_event(self, origin: Origin, data: bytes, source: Source) -> None:
        decoded = self._event_decoder.decode(data)
        if decoded is None:
            return
        self.aggregator.on_event(decoded, origin=origin)
        self.metrics.messages.labels(decoded.__struct_config__.tag).inc()

    def _on_replay(self, reason: str, outcome: str, n: int) -> None:
        log.info("event replay", extra={"reason": reason, "outcome": outcome, "messages": n})
