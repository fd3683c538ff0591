"""The two small interfaces the sharing layer sits between.

:class:`EventSink` is what the picker service calls for its *own* traffic (it does not
need to know about NATS); :class:`AccountingHooks` is the part of the scheduler's
contract (:class:`picker.scheduling.api.Scheduler`) that peers' traffic is applied to.
Keeping both as Protocols lets the discrete-event simulation plug in its own delayed
bus without NATS.
"""

from __future__ import annotations

from typing import Protocol

from picker.scheduling.api import RequestInfo

__all__ = ["AccountingHooks", "EventSink"]


class EventSink(Protocol):
    """Receives this replica's own assignments and completions. Must never block or raise."""

    def on_local_assignment(self, request: RequestInfo, address: str, now: float) -> None: ...

    def on_local_completion(
        self,
        request_id: str,
        address: str,
        status: int,
        prompt_tokens: int,
        output_tokens: int,
        latency_s: float,
        ttft_s: float,
        now: float,
    ) -> None: ...


class AccountingHooks(Protocol):
    """The scheduler hooks peers' events are applied through."""

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None: ...

    def on_completed(self, request_id: str, now: float) -> None: ...
