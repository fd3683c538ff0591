"""The operations HTTP endpoint every service exposes: ``/metrics``, ``/healthz``, ``/readyz``.

``/healthz`` answers 200 while the process's event loop runs (liveness). ``/readyz``
answers 200 only when every readiness check passes, and lists the failing ones
otherwise, so a Kubernetes probe and a human both see why a pod is not ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Health:
    """Named readiness checks; each is a callable returning ``True`` when ready."""

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def failing(self) -> list[str]:
        bad = []
        for name, check in self._checks.items():
            try:
                ok = check()
            except Exception:  # a broken check means not ready, never a 500
                log.exception("readiness check raised", extra={"check": name})
                ok = False
            if not ok:
                bad.append(name)
        return bad

    def ready(self) -> bool:
        return not self.failing()


class OpsServer:
    """A small aiohttp server; other routes can be added to ``app`` before ``start``."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        self.host, self.port = host, port
        self.registry, self.health = registry, health
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:  # let tests ask for a free port
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("ops server listening", extra={"address": f"{self.host}:{self.port}"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        failing = self.health.failing()
        if failing:
            return web.json_response({"status": "not ready", "failing": failing}, status=503)
        return web.json_response({"status": "ready"})


def add_ops_flags(parser, default_port: int) -> None:
    parser.add_argument(
        "--ops-host", default="0.0.0.0", help="address of the /metrics, /healthz, /readyz server"
    )
    parser.add_argument("--ops-port", type=int, default=default_port, help="port of the ops server (0 = any)")
