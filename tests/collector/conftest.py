"""Fixtures for the collector tests: model servers, a collector factory, a NATS subscriber."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import nats
import pytest

from collector.service import Collector, CollectorConfig
from collector.targets import Target
from shared import schemas
from shared.natsconn import NatsOptions
from shared.subjects import Subjects
from tests.support.fakepod import FakePods

try:  # the simulator's in-process API, when it is there
    from sim.server import SimCluster
except ImportError:  # pragma: no cover - depends on the sim/ package's progress
    SimCluster = None


@contextlib.asynccontextmanager
async def model_servers(n: int) -> AsyncIterator[list]:
    """``n`` vLLM-like servers with ``.name``, ``.port``, ``.address``, ``stop()``, ``start()``.

    Simulated vLLM pods from sim/ when available, else this package's fake pods.
    """
    if SimCluster is not None:
        async with SimCluster(n=n) as cluster:
            yield cluster.pods
    else:
        async with FakePods(n) as pods:
            yield pods.pods


def targets_of(pods, pool: str = "pool", namespace: str = "default", node: str = "") -> list[Target]:
    return [Target(namespace, pool, p.name, "127.0.0.1", p.port, node) for p in pods]


class Subscriber:
    """Collects every endpoint message; ``latest`` keeps the last one per (pod, port)."""

    def __init__(self) -> None:
        self.messages: list[schemas.EndpointSnapshot | schemas.Tombstone] = []
        self.by_pod: dict[str, list] = defaultdict(list)
        self.decoder = schemas.endpoint_decoder()
        self.nc = None

    async def start(self, url: str, subject: str | None = None) -> Subscriber:
        self.nc = await nats.connect(url)
        await self.nc.subscribe(subject or Subjects().all_endpoints(), cb=self._on_msg)
        await self.nc.flush()
        return self

    async def _on_msg(self, msg) -> None:
        m = self.decoder.decode(msg.data)
        if m is not None:
            self.messages.append(m)
            self.by_pod[m.pod].append(m)

    def last(self, pod: str):
        msgs = self.by_pod.get(pod)
        return msgs[-1] if msgs else None

    def snapshots(self, pod: str) -> list[schemas.EndpointSnapshot]:
        return [m for m in self.by_pod.get(pod, []) if isinstance(m, schemas.EndpointSnapshot)]

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


@pytest.fixture
async def subscriber(nats_server) -> AsyncIterator[Subscriber]:
    sub = await Subscriber().start(nats_server.url)
    yield sub
    await sub.close()


@pytest.fixture
async def make_collector(nats_server):
    """``await make_collector(targets=..., **config)`` -> a started collector, stopped at teardown."""
    made: list[Collector] = []

    async def factory(**kwargs) -> Collector:
        kwargs.setdefault("node_name", "node-a")
        kwargs.setdefault("collector_name", "test")
        kwargs.setdefault("nats", NatsOptions(servers=[nats_server.url], reconnect_wait=0.1))
        kwargs.setdefault("ops_port", None)
        kwargs.setdefault("scrape_timeout", 0.3)
        c = Collector(CollectorConfig(**kwargs))
        await c.start()
        made.append(c)
        return c

    yield factory
    for c in made:
        await asyncio.wait_for(c.stop(), 15)
