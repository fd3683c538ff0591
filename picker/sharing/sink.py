"""The two small interfaces the sharing layer sits between.

:class:`EventSink` (defined by the picker service in :mod:`picker.hooks`) is what the
ext_proc path calls for its *own* traffic, so it need not know about NATS;
:class:`AccountingHooks` is the part of the scheduler's
contract (:class:`picker.scheduling.api.Scheduler`) that peers' traffic is applied to.
Keeping both as Protocols lets the discrete-event simulation plug in its own delayed
bus without NATS.
"""

from __future__ import annotations

from typing import Protocol

from picker.hooks import EventSink
from picker.scheduling.api import RequestInfo

__all__ = ["AccountingHooks", "EventSink"]


class AccountingHooks(Protocol):
    """The scheduler hooks peers' events are applied through."""

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None: ...

    def on_completed(self, request_id: str, now: float) -> None: ...

    def set_peer_rank(self, index: int, count: int, unseen: float = 1.0) -> None: ...
