"""The asyncio side of flow control: futures for queued requests and the dispatch loop.

The director hands a request to :meth:`FlowRunner.submit`. When it can go at once the
answer is a :class:`~picker.scheduling.api.Decision`, as without flow control (no task,
no future: the fast path stays synchronous). Otherwise it gets a :class:`Queued`, whose
future the ext_proc stream awaits; the loop (:meth:`FlowRunner.run`, one supervised task)
re-runs the controller's pump when a request completes (:meth:`kick`) and every
``tick_s`` while anything waits (metrics move, TTLs pass). A stream that closes while its
request waits calls :meth:`cancel`: the entry leaves the queue at once.

Dispatch calls back into the director synchronously (``finish``), so the assignment is
counted in the pool state before the pump looks at the next request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from picker.scheduling.api import Decision, RequestInfo

from .controller import FlowController
from .queues import Item

__all__ = ["FlowRunner", "Queued", "slo_seconds"]

log = logging.getLogger(__name__)


def slo_seconds(value: str | None) -> float | None:
    """``x-slo-ttft-ms`` as seconds; None when absent or not a positive number (then FCFS)."""
    if not value:
        return None
    try:
        ms = float(value)
    except ValueError:
        return None
    return ms / 1000.0 if 0 < ms < 1e9 else None


class Queued:
    """A request waiting in flow control; the ext_proc stream awaits :attr:`future`."""

    __slots__ = ("body", "body_ends", "context", "future", "item", "runner")

    def __init__(self, runner: FlowRunner, context: Any, body: bytes) -> None:
        self.runner = runner
        self.context = context  # the director's: what it needs to finish the request
        self.body = body
        self.body_ends = True
        self.item: Item | None = None
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    # -- the controller's Waiter -----------------------------------------------------------
    def dispatch(self, decision: Decision, info: RequestInfo) -> None:
        result = self.runner.finish(self.context, decision, info)
        if self.future.done():  # the stream went away in the same loop turn: give it back
            self.runner.abandon(result)
            return
        self.future.set_result(result)

    def reject(self, status: int, reason: str, dropped: str) -> None:
        result = self.runner.fail(self.context, status, reason, dropped)
        if not self.future.done():
            self.future.set_result(result)


class FlowRunner:
    def __init__(
        self,
        controller: FlowController,
        *,
        finish: Callable[[Any, Decision, RequestInfo], Any] | None = None,
        fail: Callable[[Any, int, str, str], Any] | None = None,
        abandon: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.controller = controller
        # The director's callbacks (set by Director.__init__): finish (context, decision,
        # info) -> Routed; fail (context, status, reason, dropped) -> Rejected; abandon a
        # Routed whose stream is gone.
        self.finish: Any = finish
        self.fail: Any = fail
        self.abandon: Any = abandon
        self.clock = clock
        self.own: dict[str, tuple[int, int]] = {}  # address -> this replica's (requests, tokens)
        self._wake: asyncio.Event | None = None

    def submit(
        self, info: RequestInfo, size: int, context: Any, body: bytes, slo_ttft_s: float | None = None
    ) -> Decision | Queued:
        q = Queued(self, context, body)
        out = self.controller.submit(info, size, self.clock(), q, slo_ttft_s)
        if isinstance(out, Decision):
            return out
        q.item = out
        self.kick()
        return q

    async def wait(self, q: Queued) -> Any:
        return await q.future

    def cancel(self, q: Queued) -> None:
        """The ext_proc stream closed while ``q`` waited: remove it now."""
        removed = q.item is not None and self.controller.cancel(q.item, self.clock())
        if removed and not q.future.done():
            q.future.cancel()

    def assigned(self, address: str, tokens: int) -> None:
        """This replica sent a request to ``address`` (own load: the pool-wide shares)."""
        n, t = self.own.get(address, (0, 0))
        self.own[address] = (n + 1, t + tokens)

    def completed(self, info: RequestInfo, address: str, tokens: int, output_tokens: int, now: float) -> None:
        """A dispatched request ended: charge its output, and its slot may let the next one go."""
        n, t = self.own.get(address, (0, 0))
        if n <= 1:
            self.own.pop(address, None)
        else:
            self.own[address] = (n - 1, max(0, t - tokens))
        self.controller.completed(info.fairness_id, output_tokens, now)
        self.kick()

    def own_load(self, address: str) -> tuple[int, int]:
        return self.own.get(address, (0, 0))

    def kick(self) -> None:
        """Something changed (a completion, a new request): re-run the pump soon."""
        if self.controller.queued and self._wake is not None:
            self._wake.set()

    def pump(self) -> int:
        try:
            return self.controller.pump(self.clock())
        except Exception:
            log.exception("flow-control dispatch failed")
            return 0

    async def run(self) -> None:
        """The dispatch loop: wakes on a kick or every tick while something waits."""
        self._wake = wake = asyncio.Event()
        tick = self.controller.cfg.tick_s
        try:
            while True:
                timeout = tick if self.controller.queued else None
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except TimeoutError:
                    pass
                wake.clear()
                self.pump()
        finally:
            self._wake = None
