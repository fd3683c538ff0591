"""The collector: scrape every local model server, publish snapshots on NATS.

Structure (all in one event loop):

* one **scrape task per endpoint** (:class:`EndpointScraper`): GET ``/metrics`` over a
  shared keep-alive ``aiohttp`` session every ``scrape_interval`` (+/- jitter, with a
  random initial phase), bounded by ``scrape_timeout``; a slow or dead pod only delays
  its own task. The result is parsed and turned into an
  :class:`~shared.schemas.EndpointSnapshot` synchronously, with no ``await`` between
  the response and the hand-off, so cancelling a task never leaves half an update;
* one **publisher task** (:class:`Publisher`): scrape tasks hand it the latest snapshot
  per endpoint (a dict, so it is bounded by the number of endpoints and coalesces
  updates); it publishes them while NATS is connected and keeps only the latest while it
  is not. On reconnect it re-creates the streams and republishes every endpoint. The
  scrape tasks never wait on NATS;
* one **discovery** task (static file/flags or Kubernetes list+watch) that calls
  :meth:`Collector.apply` with the full desired target set; endpoints that leave get a
  :class:`~shared.schemas.Tombstone`.

A snapshot is published when a field a scheduler uses changes (health, model, queue,
running, KV usage and capacity, block size, LoRA state, address), and otherwise as a
heartbeat every ``heartbeat_interval``. ``seq`` counts publishes per endpoint (tombstones
included) and survives an endpoint leaving and coming back; ``epoch`` is random per
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
import msgspec
from prometheus_client import CollectorRegistry

from collector.metrics import CollectorMetrics
from collector.parse import parse
from collector.targets import Key, StaticDiscovery, Target
from shared import natsconn
from shared.natsconn import NatsOptions, StreamSettings
from shared.ops import Health, OpsServer
from shared.schemas import EndpointSnapshot, LoraState, Tombstone, encode
from shared.subjects import Subjects

log = logging.getLogger(__name__)

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


def change_key(s: EndpointSnapshot) -> tuple:
    """The fields a scheduler acts on; a change in any of them is published at once."""
    lora = s.lora
    return (
        s.healthy,
        s.ready,
        s.address,
        s.model,
        s.waiting,
        s.running,
        s.kv_usage,
        s.kv_capacity_tokens,
        s.block_size,
        tuple(lora.running),
        tuple(lora.waiting),
        lora.max_lora,
        tuple(s.served_models),
    )


# ---------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------


class Publisher:
    """Publishes the latest message per endpoint; never queues more than one per endpoint."""

    def __init__(
        self,
        subjects: Subjects,
        epoch: str,
        identity: str,
        metrics: CollectorMetrics,
        stream_settings: StreamSettings,
    ) -> None:
        self.subjects = subjects
        self.epoch = epoch
        self.identity = identity
        self.metrics = metrics
        self.stream_settings = stream_settings
        self.nc = None  # nats.aio.client.Client once connected
        self.pending: dict[Key, tuple[EndpointSnapshot, str]] = {}
        # Tombstones wait apart, per (subject, address), and go out before snapshots: a newer
        # snapshot on the same subject (a pod that came back, or moved to a new IP) must not
        # coalesce its predecessor's tombstone away.
        self.pending_tombs: dict[tuple[Key, str], Tombstone] = {}
        self.latest: dict[Key, EndpointSnapshot] = {}
        # ``seq`` counts per endpoint *address* (pod IP x port), as receivers order updates
        # per address: a pod that reuses a departed pod's IP continues its sequence instead
        # of starting below the departed pod's tombstone.
        self.seq: dict[str, int] = {}
        self._subject: dict[Key, str] = {}
        self._wake = asyncio.Event()
        self.streams_ready = False
        self._resync_task: asyncio.Task | None = None
        self.published = 0

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def subject(self, key: Key) -> str:
        subj = self._subject.get(key)
        if subj is None:
            ns, pool, pod, port = key
            subj = self._subject[key] = self.subjects.endpoint(ns, pool, pod, port)
        return subj

    # -- called synchronously by scrape tasks and discovery ------------------------------
    def offer(self, key: Key, snap: EndpointSnapshot, reason: str | None) -> None:
        """Record the latest snapshot; queue it for publishing when ``reason`` is set."""
        self.latest[key] = snap
        if reason is None:
            return
        if not self.connected:
            self.metrics.publish_deferred.inc()
        self.pending[key] = (snap, reason)
        self._wake.set()

    def remove(self, key: Key, tombstone: Tombstone) -> None:
        """The endpoint left: its unpublished snapshot is dropped, its tombstone queued."""
        self.latest.pop(key, None)
        self.pending.pop(key, None)
        self.pending_tombs[(key, tombstone.address)] = tombstone
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self.pending) + len(self.pending_tombs)

    # -- the task ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.drain()

    async def drain(self) -> None:
        """Publish everything pending (tombstones first), as long as NATS is connected."""
        while self.pending_tombs or self.pending:
            nc = self.nc
            if nc is None or not nc.is_connected:
                return  # keep the latest per endpoint; the reconnect callback wakes us
            if self.pending_tombs:
                tkey = next(iter(self.pending_tombs))
                key = tkey[0]
                msg: EndpointSnapshot | Tombstone = self.pending_tombs.pop(tkey)
                reason = "removed"
            else:
                key = next(iter(self.pending))
                msg, reason = self.pending.pop(key)
            seq = self.seq.get(msg.address, 0) + 1
            msg.seq, msg.epoch, msg.collector = seq, self.epoch, self.identity
            try:
                await nc.publish(self.subject(key), encode(msg))
            except Exception as exc:
                self.metrics.publish_errors.inc()
                log.warning("publish failed; will retry", extra={"error": repr(exc), "endpoint": key})
                if isinstance(msg, Tombstone):
                    self.pending_tombs.setdefault((key, msg.address), msg)
                else:
                    self.pending.setdefault(key, (msg, reason))
                await asyncio.sleep(0.1)
                self._wake.set()
                return
            self.seq[msg.address] = seq
            self.published += 1
            kind = "tombstone" if isinstance(msg, Tombstone) else "snapshot"
            self.metrics.publishes.labels(kind, reason).inc()

    # -- connection events ------------------------------------------------------------------
    async def on_connected(self, nc) -> None:
        self.nc = nc
        await self.resync("connect")

    async def on_disconnected(self) -> None:
        pass  # nothing to do: drain() checks the connection before every publish

    async def on_reconnected(self) -> None:
        # Do not block nats-py's callback: the streams may have gone with a restarted server,
        # so re-create them, then republish every endpoint.
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.create_task(self.resync("reconnect"), name="collector-resync")

    async def resync(self, reason: str, *, ensure: bool = True) -> None:
        """(Re-)create the streams, then queue every endpoint's latest snapshot."""
        if ensure:
            await self.ensure_streams()
        # Republish every endpoint (pending tombstones stay queued: removed keys are not in
        # ``latest``). Messages sent between the reconnect and now may have missed a
        # stream that the restarted server lost, so this pass is after ensure_streams.
        for key, snap in self.latest.items():
            self.pending[key] = (snap, reason)
        self._wake.set()

    async def ensure_streams(self, attempts: int = 3) -> bool:
        nc = self.nc
        if nc is None:
            return False
        for attempt in range(attempts):
            try:
                await asyncio.wait_for(
                    natsconn.ensure_streams(nc.jetstream(), self.subjects, self.stream_settings), 5.0
                )
                self.streams_ready = True
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.stream_errors.inc()
                log.warning(
                    "cannot create/update JetStream streams",
                    extra={"error": repr(exc), "attempt": attempt + 1},
                )
                await asyncio.sleep(0.5 * (attempt + 1))
        self.streams_ready = False
        return False

    async def close(self) -> None:
        if self._resync_task is not None:
            self._resync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._resync_task


# ---------------------------------------------------------------------------------------
# scraping
# ---------------------------------------------------------------------------------------

_HEADERS = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity"}


class _ModelCard(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_ModelCard] = []


_models_decoder = msgspec.json.Decoder(_ModelList)


class EndpointScraper:
    """The scrape loop and health state of one endpoint."""

    def __init__(self, target: Target, owner: Collector) -> None:
        self.target = target
        self.owner = owner
        cfg = owner.config
        self.url = target.url(cfg.metrics_path)
        self.node = target.node or cfg.node_name
        self.snapshot: EndpointSnapshot | None = None
        self.published_key: tuple | None = None
        self.last_offer = -1e18
        self.failures = 0
        self.scrapes = 0
        self.healthy: bool | None = None  # None until the first verdict
        self.task: asyncio.Task | None = None
        self._err_children: dict = {}
        self.models_url = target.url("/v1/models")
        self.served_models: list[str] = []  # from /v1/models; kept when a read fails
        self._models_due = 0.0

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.owner.config
        loop = asyncio.get_running_loop()
        interval, jitter = cfg.scrape_interval, cfg.scrape_jitter
        timeout = aiohttp.ClientTimeout(total=cfg.scrape_timeout)
        await asyncio.sleep(random.uniform(0, interval))  # spread the endpoints' phases
        next_t = loop.time()
        while True:
            try:
                await self.scrape_once(timeout)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end this endpoint's scraping
                log.exception("scrape loop error", extra={"endpoint": self.target.describe()})
            next_t += interval * (1.0 + random.uniform(-jitter, jitter)) if jitter else interval
            now = loop.time()
            if next_t < now:
                next_t = now  # fell behind (slow pod): do not burst to catch up
            await asyncio.sleep(next_t - now)

    async def read_models(self, timeout: aiohttp.ClientTimeout) -> None:
        """Refresh ``served_models`` from /v1/models (vLLM lists the base model and its adapters).

        The metrics name only the adapters that are running or waiting; without this list a
        picker would send a request for an adapter to a server that has not loaded it.
        Adapters change rarely, so this runs every ``models_interval``, not every scrape; a
        failed read keeps the previous list (a dead pod is the metrics scrape's business).
        """
        try:
            async with self.owner.session.get(
                self.models_url, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    return
                page = _models_decoder.decode(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError, msgspec.ValidationError):
            return
        self.served_models = sorted({card.id for card in page.data})

    async def scrape_once(self, timeout: aiohttp.ClientTimeout) -> None:
        owner = self.owner
        interval = owner.config.models_interval
        if interval and time.monotonic() >= self._models_due:
            self._models_due = time.monotonic() + interval
            await self.read_models(timeout)
        m = owner.metrics
        ts = time.time()
        t0 = time.perf_counter()
        body: bytes | None = None
        kind = msg = ""
        try:
            async with owner.session.get(
                self.url, timeout=timeout, headers=_HEADERS, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    kind, msg = "http", f"HTTP {resp.status}"
                elif resp.content_length is not None and resp.content_length > owner.config.max_page_bytes:
                    kind, msg = "http", f"page too large ({resp.content_length} bytes)"
                else:
                    body = await resp.read()
        except TimeoutError:
            kind, msg = "timeout", f"no answer within {owner.config.scrape_timeout}s"
        except (aiohttp.ClientConnectionError, OSError) as exc:
            kind, msg = "connect", _describe(exc)
        except aiohttp.ClientError as exc:
            kind, msg = "http", _describe(exc)
        self.scrapes += 1
        if body is not None:
            pm = parse(body)
            elapsed = time.perf_counter() - t0
            if pm.error:
                kind, msg = "parse", pm.error
            else:
                m.scrapes_ok.observe(elapsed)
                self._on_success(pm, ts)
                return
        m.scrapes_failed.observe(time.perf_counter() - t0)
        self._on_failure(kind, msg, ts)

    # -- verdicts (synchronous: no await between the scrape and the hand-off) -----------------
    def _on_success(self, pm, ts: float) -> None:
        t = self.target
        snap = EndpointSnapshot(
            namespace=t.namespace,
            pool=t.pool,
            pod=t.pod,
            address=t.address,
            node=self.node,
            model=pm.model,
            waiting=pm.waiting,
            running=pm.running,
            kv_usage=pm.kv_usage,
            kv_capacity_tokens=pm.kv_capacity_tokens,
            block_size=pm.block_size,
            prefix_queries=pm.prefix_queries,
            prefix_hits=pm.prefix_hits,
            preemptions=pm.preemptions,
            lora=LoraState(running=pm.lora_running, waiting=pm.lora_waiting, max_lora=pm.max_lora),
            served_models=self.served_models,
            ts=ts,
        )
        if self.healthy is False:
            log.info(
                "endpoint healthy again", extra={"endpoint": t.describe(), "after_failures": self.failures}
            )
            self.owner._health_changed()
        elif self.healthy is None:
            self.owner._health_changed()
        self.failures = 0
        self.healthy = True
        self._offer(snap)

    def _on_failure(self, kind: str, msg: str, ts: float) -> None:
        t = self.target
        self.failures += 1
        child = self._err_children.get(kind)
        if child is None:
            child = self._err_children[kind] = self.owner.metrics.scrape_errors.labels(
                t.namespace, t.pool, t.pod, kind
            )
        child.inc()
        if self.failures >= self.owner.config.unhealthy_after:
            if self.healthy is not False:
                log.warning(
                    "endpoint unhealthy",
                    extra={"endpoint": t.describe(), "failures": self.failures, "error": msg},
                )
                self.healthy = False
                self.owner._health_changed()
            base = self.snapshot or EndpointSnapshot(
                namespace=t.namespace, pool=t.pool, pod=t.pod, address=t.address, node=self.node
            )
            snap = EndpointSnapshot(
                namespace=base.namespace,
                pool=base.pool,
                pod=base.pod,
                address=base.address,
                node=base.node,
                healthy=False,
                scrape_error=f"{kind}: {msg}",
                consecutive_failures=self.failures,
                model=base.model,
                waiting=base.waiting,
                running=base.running,
                kv_usage=base.kv_usage,
                kv_capacity_tokens=base.kv_capacity_tokens,
                block_size=base.block_size,
                prefix_queries=base.prefix_queries,
                prefix_hits=base.prefix_hits,
                preemptions=base.preemptions,
                lora=base.lora,
                served_models=base.served_models,
                ts=ts,  # the verdict is current even though the metrics are not
            )
            self._offer(snap)
        elif self.snapshot is not None:
            # Not yet unhealthy: keep the last good values and their (ageing) timestamp;
            # a heartbeat still goes out on time so readers see the age grow.
            self.snapshot.consecutive_failures = self.failures
            self.snapshot.scrape_error = f"{kind}: {msg}"
            self._offer(self.snapshot)

    def _offer(self, snap: EndpointSnapshot) -> None:
        key = change_key(snap)
        now = time.monotonic()
        if key != self.published_key:
            reason: str | None = "change"
        elif now - self.last_offer >= self.owner.config.heartbeat_interval:
            reason = "heartbeat"
        else:
            reason = None
        self.snapshot = snap
        if reason is not None:
            self.published_key = key
            self.last_offer = now
        self.owner.publisher.offer(self.target.key, snap, reason)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


# ---------------------------------------------------------------------------------------
# the collector
# ---------------------------------------------------------------------------------------


class Collector:
    """In-process API: ``c = Collector(cfg); await c.start(); ...; await c.stop()``."""

    def __init__(self, config: CollectorConfig, *, registry: CollectorRegistry | None = None) -> None:
        config.validate()
        self.config = config
        self.metrics = CollectorMetrics(registry)
        self.epoch = secrets.token_hex(8)
        self.identity = config.identity()
        self.subjects = config.nats.subjects
        self.publisher = Publisher(
            self.subjects, self.epoch, self.identity, self.metrics, config.stream_settings
        )
        self.scrapers: dict[Key, EndpointScraper] = {}
        self.health = Health()
        self.health.add_check("discovery", self.discovery_synced)
        self.health.add_check("nats", lambda: self.publisher.connected)
        # computed at scrape time, so /metrics is right whether or not /readyz is polled
        self.metrics.nats_connected.set_function(lambda: 1.0 if self.publisher.connected else 0.0)
        self.metrics.discovery_synced.set_function(lambda: 1.0 if self.discovery_synced() else 0.0)
        self.ops: OpsServer | None = None
        self.session: aiohttp.ClientSession | None = None  # type: ignore[assignment]
        self.discovery: StaticDiscovery | object | None = None
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._kube_api = None
        self._nats_task: asyncio.Task | None = None
        self.started = False

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> Collector:
        if self.started:
            return self
        self.started = True
        cfg = self.config
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ttl_dns_cache=None),
            auto_decompress=False,
            raise_for_status=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # scrapes never carry cookies
        )
        if cfg.ops_port is not None:
            self.ops = OpsServer(cfg.ops_host, cfg.ops_port, self.metrics.registry, self.health)
            await self.ops.start()
        self._nats_task = self._spawn("collector-nats", self._nats_main())
        self._spawn("collector-publisher", self.publisher.run())
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
        if self._nats_task is not None and not self._nats_task.done() and self.publisher.nc is None:
            await asyncio.wait([self._nats_task], timeout=2.0)
        scrapers = [s.task for s in self.scrapers.values() if s.task is not None]
        for t in [*self._tasks, *scrapers]:
            t.cancel()
        await asyncio.gather(*self._tasks, *scrapers, return_exceptions=True)
        self._tasks.clear()
        await self.publisher.close()
        nc = self.publisher.nc
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publisher.drain(), 2.0)
            try:
                await asyncio.wait_for(nc.drain(), 3.0)
            except Exception:
                with contextlib.suppress(Exception):
                    await nc.close()
            self.publisher.nc = None
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

    def _spawn(self, name: str, coro) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def _nats_main(self) -> None:
        try:
            nc = await natsconn.connect(
                self.config.nats,
                on_disconnected=self.publisher.on_disconnected,
                on_reconnected=self.publisher.on_reconnected,
                stop=self._stop,
            )
        except ConnectionError:
            return  # stopped before NATS came up
        if self._stop.is_set():
            await nc.close()
            return
        await self.publisher.on_connected(nc)
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
        self._spawn("collector-discovery", self._run_discovery(disc))

    async def _run_discovery(self, disc) -> None:
        backoff = 0.5
        while True:
            try:
                await disc.run()  # static without a file returns at once; the others run forever
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("discovery failed; restarting", extra={"backoff_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(10.0, backoff * 2)

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
        healthy = sum(1 for s in self.scrapers.values() if s.healthy is not False)
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
        self._health_changed()

    def _add(self, target: Target) -> None:
        scraper = EndpointScraper(target, self)
        self.scrapers[target.key] = scraper
        scraper.task = asyncio.create_task(scraper.run(), name=f"scrape {target.describe()}")
        log.info("endpoint added", extra={"endpoint": target.describe()})

    def _stop_scraper(self, scraper: EndpointScraper) -> None:
        if scraper.task is not None:
            scraper.task.cancel()

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
