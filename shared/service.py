"""Process lifecycle: the event loop, SIGTERM handling, and supervised background tasks.

A service's ``main`` is an ``async`` function taking a ``stop`` event. :func:`run`
installs uvloop, turns SIGTERM and SIGINT into ``stop.set()``, and returns the exit
code. A :class:`Supervisor` owns every background task: a task that crashes is logged
and restarted with backoff, and :meth:`Supervisor.close` cancels them all on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(main: Callable[[asyncio.Event], Awaitable[None]], *, use_uvloop: bool = True) -> int:
    """Run ``main(stop)`` until it returns; SIGTERM/SIGINT set ``stop`` for a graceful exit."""
    if use_uvloop:
        install_uvloop()

    async def _wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, sig, stop)
        await main(stop)

    try:
        asyncio.run(_wrapper())
    except KeyboardInterrupt:
        return 130
    return 0


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.warning("second signal, exiting now", extra={"signal": sig.name})
        raise SystemExit(1)
    log.info("shutting down", extra={"signal": sig.name})
    stop.set()


class Supervisor:
    """Owns background tasks; restarts the ones that crash, cancels all on close."""

    def __init__(self, name: str = "service") -> None:
        self.name = name
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self.restarts: dict[str, int] = {}

    def spawn(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        *,
        restart: bool = True,
        max_backoff: float = 5.0,
    ) -> asyncio.Task[None]:
        """Start ``factory()`` as task ``name``; if it raises and ``restart``, start it again."""
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name!r} is already running")
        task = asyncio.create_task(self._guard(name, factory, restart, max_backoff), name=name)
        self._tasks[name] = task
        return task

    async def _guard(
        self, name: str, factory: Callable[[], Coroutine[Any, Any, None]], restart: bool, max_backoff: float
    ) -> None:
        backoff = 0.05
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closing or not restart:
                    log.exception("background task failed", extra={"task": name})
                    return
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.exception(
                    "background task crashed; restarting", extra={"task": name, "backoff_s": backoff}
                )
                await asyncio.sleep(backoff)
                backoff = min(max_backoff, backoff * 2)

    def cancel(self, name: str) -> None:
        """Cancel task ``name`` and forget it (its name can be reused at once); no-op if unknown."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait (bounded) for them to finish."""
        self._closing = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("task did not stop in time", extra={"task": task.get_name()})
        self._tasks.clear()

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
