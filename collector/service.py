"""The collector service: scrape every local model server, publish snapshots on NATS.

This module only wires the parts together (all in one event loop, every background task
under one :class:`shared.service.Supervisor`):

* discovery (:mod:`collector.targets` static file/flags, or :mod:`collector.kubedisc`)
  calls :meth:`Collector.apply` with the full desired target set;
* one :class:`~collector.scraper.Scraper` task per endpoint fetches and parses its page
  and hands the outcome to that endpoint's :class:`~collector.snapshots.EndpointState`,
  which decides health and whether to publish;
* one :class:`~collector.publisher.Publisher` task publishes the latest message per
  endpoint onto the bus (:class:`shared.natsbus.NatsBus`, or any :class:`shared.bus.Bus`
  passed in, such as a ``MemoryBus`` in unit tests); endpoints that leave get a
  :class:`~shared.schemas.Tombstone`.

``epoch`` is random per process; ``seq`` counts publishes per endpoint address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable

import aiohttp
from prometheus_client import CollectorRegistry

from collector import adapter_wiring
from collector.adapters import AdapterReconciler
from collector.config import DEFAULT_OPS_PORT, CollectorConfig
from collector.kvevents import KVEventsHub, KVStreamsCollector, kv_settings
from collector.metrics import CollectorMetrics
from collector.publisher import Publisher
from collector.scraper import Scraper
from collector.snapshots import EndpointState
from collector.targets import Key, StaticDiscovery, Target
from shared.bus import Bus
from shared.kvstore import KvStore
from shared.natsbus import NatsBus
from shared.ops import Health, OpsServer
from shared.schemas import Tombstone
from shared.service import Supervisor

__all__ = ["DEFAULT_OPS_PORT", "Collector", "CollectorConfig"]

log = logging.getLogger(__name__)


class Collector:
    """In-process API: ``c = Collector(cfg); await c.start(); ...; await c.stop()``.

    Without ``bus`` the collector connects to NATS (``config.nats``) in the background and
    owns that connection; a ``bus`` passed in (a ``MemoryBus`` in unit tests) is used as is
    and left open.
    """

    def __init__(
        self,
        config: CollectorConfig,
        *,
        registry: CollectorRegistry | None = None,
        bus: Bus | None = None,
        adapter_kv: KvStore | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.metrics = CollectorMetrics(registry)
        self.epoch = secrets.token_hex(8)
        self.identity = config.identity()
        self.subjects = config.nats.subjects
        self.supervisor = Supervisor("collector")
        self.bus: Bus | None = bus
        self._own_bus = bus is None  # we connect it, we close it
        self.publisher = Publisher(
            self.subjects, self.epoch, self.identity, self.metrics, spawn=self._spawn_once
        )
        self.scrapers: dict[Key, Scraper] = {}
        self.kv = KVEventsHub(lambda: self.publisher.bus, self.epoch, kv_settings(config))  # KV events
        self.metrics.registry.register(KVStreamsCollector(self.kv))
        self.health = Health()
        self.health.add_check("discovery", self.discovery_synced)
        self.health.add_check("nats", lambda: self.publisher.connected)
        # computed at scrape time, so /metrics is right whether or not /readyz is polled
        self.metrics.nats_connected.set_function(lambda: 1.0 if self.publisher.connected else 0.0)
        self.metrics.discovery_synced.set_function(lambda: 1.0 if self.discovery_synced() else 0.0)
        self.ops: OpsServer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.discovery: StaticDiscovery | object | None = None
        self._stop = asyncio.Event()
        self._kube_api = None
        self._nats_task: asyncio.Task | None = None
        self.started = False
        self._adapter_kv = adapter_kv  # a MemoryKv in unit tests; else the NATS bucket
        self.adapters: AdapterReconciler | None = None  # set when a spec source is configured

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> Collector:
        if self.started:
            return self
        self.started = True
        cfg = self.config
        self.supervisor = Supervisor("collector")  # a fresh one: a stopped collector can start again
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ttl_dns_cache=None),
            auto_decompress=False,
            raise_for_status=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # scrapes never carry cookies
        )
        if cfg.ops_port is not None:
            self.ops = OpsServer(cfg.ops_host, cfg.ops_port, self.metrics.registry, self.health)
            await self.ops.start()
        self._nats_task = self.supervisor.spawn("collector-bus", self._bus_main)
        self.supervisor.spawn("collector-publisher", self.publisher.run)
        await self._start_discovery()
        log.info(
            "collector started",
            extra={
                "identity": self.identity,
                "epoch": self.epoch,
                "discovery": cfg.discovery_mode(),
                "scrape_interval_s": cfg.scrape_interval,
            },
        )
        return self

    async def stop(self) -> None:
        """Stop scraping, publish what is complete, close NATS cleanly. No tombstones:
        a restarting collector must not make the pickers drop this node's pods."""
        if not self.started:
            return
        self.started = False
        self._stop.set()
        # A NATS connect still in progress returns by itself once ``_stop`` is set (cancelling
        # it instead could leave nats-py's connect attempt running): give it a moment first.
        if self._nats_task is not None and not self._nats_task.done() and self.publisher.bus is None:
            await asyncio.wait([self._nats_task], timeout=2.0)
        await self.supervisor.close()  # discovery, scrapers, publisher, resync, KV events
        self.kv.close()
        if self.publisher.bus is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publisher.drain(), 2.0)
        if self._own_bus and self.bus is not None:
            bus, self.bus = self.bus, None
            self.publisher.bus = None
            try:  # closing flushes what was handed over; force-close if that hangs
                await asyncio.wait_for(bus.close(), 3.0)
            except Exception as exc:
                log.warning("NATS close failed", extra={"error": repr(exc)})
        if self.session is not None:
            await self.session.close()
        if self._kube_api is not None:
            with contextlib.suppress(Exception):
                await self._kube_api.close()
            self._kube_api = None
        if self.ops is not None:
            await self.ops.stop()
        log.info("collector stopped", extra={"identity": self.identity})

    async def __aenter__(self) -> Collector:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn_once(self, name, factory) -> None:
        """A one-off background job under the supervisor (not restarted if it fails)."""
        if self.started:
            self.supervisor.spawn(name, factory, restart=False)

    async def _bus_main(self) -> None:
        if self.bus is None:
            try:
                bus = await NatsBus.connect(
                    self.config.nats, stop=self._stop, stream_settings=self.config.stream_settings
                )
            except ConnectionError:
                return  # stopped before NATS came up
            if self._stop.is_set():
                await bus.close()
                return
            self.bus = bus
        self.publisher.attach(self.bus)
        await self.publisher.on_connected()
        await adapter_wiring.start(self)
        # a restarted NATS (memory storage) comes back without the KV digest stream
        self.bus.on_reconnect(self.kv.stream_lost)
        # If JetStream was unavailable (disabled, or the server still starting), keep trying:
        # without the stream, new subscribers cannot bootstrap.
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 10.0)
                return
            pub = self.publisher
            if not pub.streams_ready and pub.connected and await pub.ensure_streams(attempts=1):
                await pub.resync("streams", ensure=False)

    async def _start_discovery(self) -> None:
        cfg = self.config
        if cfg.discovery_mode() == "static":
            disc = StaticDiscovery(
                self.apply,
                node=cfg.node_name,
                path=cfg.targets_file,
                flag_targets=cfg.targets,
                poll_interval_s=cfg.targets_poll_interval,
                on_error=lambda _msg: self.metrics.targets_file_errors.inc(),
            )
        else:
            from collector.kubedisc import KubeDiscovery
            from shared import kube

            self._kube_api = await kube.api_client(kubeconfig=cfg.kubeconfig, host=cfg.kube_api_server)
            disc = KubeDiscovery(
                self.apply,
                self._kube_api,
                node=cfg.node_name,
                namespaces=cfg.namespaces,
                api_version=cfg.pool_api_version,
            )
        self.discovery = disc
        # static without a file returns at once; the others run forever (restarted with
        # backoff by the supervisor if they fail)
        self.supervisor.spawn("collector-discovery", disc.run, max_backoff=10.0)

    # -- state ------------------------------------------------------------------------------
    def discovery_synced(self) -> bool:
        disc = self.discovery
        return disc is not None and disc.synced.is_set()  # type: ignore[union-attr]

    def ready(self) -> bool:
        return self.health.ready()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"collector not ready after {timeout}s: {self.health.failing()}")
            await asyncio.sleep(0.02)

    def _health_changed(self) -> None:
        healthy = sum(1 for s in self.scrapers.values() if s.state.healthy is not False)
        self.metrics.endpoints.labels("healthy").set(healthy)
        self.metrics.endpoints.labels("unhealthy").set(len(self.scrapers) - healthy)

    # -- reconciliation ---------------------------------------------------------------------
    def apply(self, targets: Iterable[Target], reasons: dict[Key, str] | None = None) -> None:
        """Make the scraped set equal ``targets``; endpoints that leave get a tombstone."""
        if not self.started:
            return
        reasons = reasons or {}
        desired = {t.key: t for t in targets}
        for key in [k for k in self.scrapers if k not in desired]:
            self._remove(key, reasons.get(key, "removed from targets"))
        for key, target in desired.items():
            cur = self.scrapers.get(key)
            if cur is None:
                self._add(target)
            elif cur.target != target:
                log.info(
                    "endpoint changed",
                    extra={"from": cur.target.describe(), "to": target.describe()},
                )
                if cur.target.address != target.address:
                    self._remove(key, "address changed")  # receivers drop the old address
                else:
                    self._stop_scraper(self.scrapers.pop(key))
                self._add(target)
        self.kv.apply(list(desired.values()), self.supervisor)
        self._health_changed()

    def _add(self, target: Target) -> None:
        cfg = self.config
        state = EndpointState(
            target,
            target.node or cfg.node_name,
            unhealthy_after=cfg.unhealthy_after,
            heartbeat_interval=cfg.heartbeat_interval,
            offer=self.publisher.offer,
            on_health_change=self._health_changed,
        )
        assert self.session is not None
        scraper = Scraper(target, state, self.session, cfg, self.metrics)
        self.scrapers[target.key] = scraper
        scraper.task = self.supervisor.spawn(_task_name(target.key), scraper.run)
        log.info("endpoint added", extra={"endpoint": target.describe()})

    def _stop_scraper(self, scraper: Scraper) -> None:
        self.supervisor.cancel(_task_name(scraper.target.key))

    def _remove(self, key: Key, reason: str) -> None:
        scraper = self.scrapers.pop(key)
        self._stop_scraper(scraper)
        t = scraper.target
        self.publisher.remove(
            key,
            Tombstone(
                namespace=t.namespace,
                pool=t.pool,
                pod=t.pod,
                address=t.address,
                reason=reason,
                ts=time.time(),
            ),
        )
        # The error series are per pod: keep them while another port of the pod is scraped.
        if not any(k[:3] == key[:3] for k in self.scrapers):
            self.metrics.forget_endpoint(t.namespace, t.pool, t.pod)
        log.info("endpoint removed", extra={"endpoint": t.describe(), "reason": reason})


def _task_name(key: Key) -> str:
    ns, pool, pod, port = key
    return f"scrape {ns}/{pool}/{pod}:{port}"
