"""Stand-in vLLM pods that serve only ``/metrics``: a test double for the collector's tests.

Each :class:`FakePod` serves a page rendered from its :class:`~sim.vllm_page.PageState`
(by the simulator's own page renderer, :func:`sim.vllm_page.render`)
(change ``pod.state`` and the next scrape sees it). It can be slowed down (``delay_s``),
made to answer garbage or an HTTP error, and stopped and restarted on the same port,
which is what the collector's failure handling is tested against. The simulator
(``sim/``) is the realistic pod; this one is cheap and fully controllable.

Run standalone (the benchmark uses this to keep the pods' CPU out of the collector's)::

    python -m tests.support.fakepod --pods 16 --base-port 38000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from aiohttp import web

from sim.vllm_page import EngineState, PageState, page_of_size, render


class FakePod:
    """One ``/metrics`` server on 127.0.0.1."""

    def __init__(
        self,
        name: str = "pod-0",
        port: int = 0,
        state: PageState | None = None,
        host: str = "127.0.0.1",
        static_page: bytes | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.state = state or PageState(engines=[EngineState()])
        self.static_page = static_page  # serve these bytes instead of rendering (benchmark)
        self.delay_s = 0.0
        self.status = 200
        self.garbage: bytes | None = None
        self.scrapes = 0
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> FakePod:
        if self._runner is not None:
            return self
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Close the port (a crashed or deleted pod)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.garbage is not None:
            return web.Response(body=self.garbage, content_type="text/plain")
        if self.status != 200:
            return web.Response(status=self.status, text="error")
        body = self.static_page if self.static_page is not None else render(self.state).encode()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")


class FakePods:
    """Several fake pods: ``async with FakePods(3) as pods: pods[0].address``."""

    def __init__(
        self, n: int, *, base_port: int = 0, name_prefix: str = "pod", static_page: bytes | None = None
    ) -> None:
        self.pods = [
            FakePod(f"{name_prefix}-{i}", base_port + i if base_port else 0, static_page=static_page)
            for i in range(n)
        ]

    def __getitem__(self, i: int) -> FakePod:
        return self.pods[i]

    def __len__(self) -> int:
        return len(self.pods)

    def __iter__(self):
        return iter(self.pods)

    async def __aenter__(self) -> FakePods:
        for p in self.pods:
            await p.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.pods:
            await p.stop()


async def _serve(args: argparse.Namespace) -> None:
    page = page_of_size(args.page_bytes).encode() if args.static else None
    async with FakePods(args.pods, base_port=args.base_port, static_page=page) as pods:
        for p in pods:
            print(f"{p.name} {p.address}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1)
    parser.add_argument("--base-port", type=int, default=0, help="first port (0 = any free ports)")
    parser.add_argument("--page-bytes", type=int, default=50_000, help="page size with --static")
    parser.add_argument(
        "--static",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve one pre-rendered page (cheapest for the pods)",
    )
    args = parser.parse_args()
    from shared.service import install_uvloop

    install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
