"""Fetch and parse one endpoint's pages: the scrape loop of one target.

Every ``scrape_interval`` (+/- ``scrape_jitter``, with a random initial phase so the
endpoints do not scrape in lockstep) the :class:`Scraper` GETs the metrics page over the
shared keep-alive session, bounded by ``scrape_timeout``; a slow or dead pod only delays
its own task, and a task that falls behind skips the missed ticks instead of bursting.
Every ``models_interval`` it also reads ``/v1/models`` (the loaded LoRA adapters).
An endpoint that showed no activity for a few scrapes is scraped every
``idle_scrape_interval`` instead, until a page shows activity or a scrape fails
(:mod:`collector.scrape_rate`); meanwhile every idle scrape is republished, so its
snapshot stays as fresh as the pickers need.

The outcome goes to the endpoint's :class:`~collector.snapshots.EndpointState`
synchronously, right after the response: the scraper knows HTTP and the parser, the
state knows health and publishing, and neither reaches into the other.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp
import msgspec

from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.parse import PageMetrics, parse
from collector.scrape_rate import RateMetrics, ScrapeRate, idle_heartbeat
from collector.snapshots import EndpointState
from collector.targets import Target

log = logging.getLogger(__name__)

_HEADERS = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity"}


class _ModelCard(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_ModelCard] = []


_models_decoder = msgspec.json.Decoder(_ModelList)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class Scraper:
    """The scrape loop of one endpoint; its verdicts go to ``state``."""

    def __init__(
        self,
        target: Target,
        state: EndpointState,
        session: aiohttp.ClientSession,
        config: CollectorConfig,
        metrics: CollectorMetrics,
    ) -> None:
        self.target = target
        self.state = state
        self.session = session
        self.config = config
        self.metrics = metrics
        self.url = target.url(config.metrics_path)
        self.models_url = target.url("/v1/models")
        self.served_models: list[str] = []  # from /v1/models; kept when a read fails
        self.loaded_models: list[str] = []  # the same, before hiding adapters being drained
        # monotonic time the request behind ``loaded_models`` was sent (0 = never read): the
        # adapter reconciler trusts an adapter's absence only in a list asked for after its load
        self.models_read_at = 0.0
        self.hidden_models: set[str] = set()  # set by the adapter reconciler (collector/adapters.py)
        self.scrapes = 0
        self.task: asyncio.Task | None = None  # set by the service that runs it
        self._models_due = 0.0
        self._err_children: dict = {}
        self.rate = ScrapeRate(config.scrape_interval, config.idle_interval())
        self._rate_metrics = RateMetrics.of(metrics.registry)

    async def run(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        jitter = cfg.scrape_jitter
        timeout = aiohttp.ClientTimeout(total=cfg.scrape_timeout)
        self._leave_idle("loop restarted")
        await asyncio.sleep(random.uniform(0, cfg.scrape_interval))  # spread the endpoints' phases
        next_t = loop.time()
        try:
            while True:
                try:
                    await self.scrape_once(timeout)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug here must not end this endpoint's scraping
                    log.exception("scrape loop error", extra={"endpoint": self.target.describe()})
                interval = self.rate.interval
                next_t += interval * (1.0 + random.uniform(-jitter, jitter)) if jitter else interval
                now = loop.time()
                if next_t < now:
                    next_t = now  # fell behind (slow pod): do not burst to catch up
                await asyncio.sleep(next_t - now)
        finally:  # cancelled (endpoint removed, shutdown) or crashed: leave the idle gauge right
            self._leave_idle("loop ended")

    async def read_models(self, timeout: aiohttp.ClientTimeout) -> None:
        """Refresh ``served_models`` from /v1/models (the base model and its adapters).

        The metrics name only the adapters that are running or waiting; without this list a
        picker would send a request for an adapter to a server that has not loaded it.
        Adapters change rarely, so this runs every ``models_interval``, not every scrape; a
        failed read keeps the previous list (a dead pod is the metrics scrape's business).
        """
        sent = time.monotonic()
        try:
            async with self.session.get(self.models_url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    return
                page = _models_decoder.decode(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError, msgspec.ValidationError):
            return
        self.loaded_models = sorted({card.id for card in page.data})
        self.models_read_at = sent
        self.served_models = [m for m in self.loaded_models if m not in self.hidden_models]

    async def scrape_once(self, timeout: aiohttp.ClientTimeout) -> None:
        cfg = self.config
        if cfg.models_interval and time.monotonic() >= self._models_due:
            self._models_due = time.monotonic() + cfg.models_interval
            await self.read_models(timeout)
        ts = time.time()
        t0 = time.perf_counter()
        body: bytes | None = None
        kind = msg = ""
        try:
            async with self.session.get(
                self.url, timeout=timeout, headers=_HEADERS, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    kind, msg = "http", f"HTTP {resp.status}"
                elif resp.content_length is not None and resp.content_length > cfg.max_page_bytes:
                    kind, msg = "http", f"page too large ({resp.content_length} bytes)"
                else:
                    body = await resp.read()
        except TimeoutError:
            kind, msg = "timeout", f"no answer within {cfg.scrape_timeout}s"
        except (aiohttp.ClientConnectionError, OSError) as exc:
            kind, msg = "connect", _describe(exc)
        except aiohttp.ClientError as exc:
            kind, msg = "http", _describe(exc)
        self.scrapes += 1
        if body is not None:
            pm = parse(body)
            if pm.error:
                kind, msg = "parse", pm.error
            else:
                self.metrics.scrapes_ok.observe(time.perf_counter() - t0)
                self._observe_rate(pm)  # before the offer: it sets the heartbeat this one uses
                self.state.success(pm, self.served_models, ts)
                return
        self.metrics.scrapes_failed.observe(time.perf_counter() - t0)
        self._count_error(kind)
        self._observe_rate(None)
        self.state.failure(kind, msg, ts)

    def _observe_rate(self, pm: PageMetrics | None) -> None:
        """Feed the scrape's outcome to the rate decision; apply a change of rate."""
        if self.rate.observe(pm):
            self._apply_rate(self.rate.idle, "failed scrape" if pm is None else "")

    def _leave_idle(self, why: str) -> None:
        """Back to the fast rate outside a scrape: a loop starts and ends on it (not counted
        as a change of rate: the endpoint left, or its loop is starting over)."""
        was_idle = self.rate.idle
        self.rate.reset()
        if was_idle:
            self._apply_rate(False, why, count=False)

    def _apply_rate(self, idle: bool, why: str, *, count: bool = True) -> None:
        cfg = self.config
        m = self._rate_metrics
        if idle:
            # every idle scrape must be republished: see scrape_rate.idle_heartbeat
            self.state.heartbeat_interval = idle_heartbeat(
                cfg.heartbeat_interval, self.rate.idle_interval, cfg.scrape_jitter
            )
            m.idle_endpoints.inc()
            if count:
                m.to_idle.inc()
        else:
            self.state.heartbeat_interval = cfg.heartbeat_interval
            m.idle_endpoints.dec()
            if count:
                m.to_fast.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "scrape rate changed",
                extra={
                    "endpoint": self.target.describe(),
                    "rate": "idle" if idle else "fast",
                    "interval_s": self.rate.interval,
                    "cause": why or ("no activity" if idle else "activity"),
                },
            )

    def _count_error(self, kind: str) -> None:
        child = self._err_children.get(kind)
        if child is None:
            t = self.target
            child = self._err_children[kind] = self.metrics.scrape_errors.labels(
                t.namespace, t.pool, t.pod, kind
            )
        child.inc()
