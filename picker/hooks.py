"""The two interfaces between the request path, the pool state and peer sharing.

* :class:`EventSink` receives **this replica's own traffic**. The ext_proc path calls it
  synchronously, on the event loop, right after the pool state's own accounting:
  ``on_local_assignment`` once per routed request (never for requests answered with an
  error, nor for headers-only requests, which carry no model work), and
  ``on_local_completion`` exactly once for every assignment, with the same
  :class:`RequestInfo`: when the response ends, when the model server answers an error
  status, or when the stream is cancelled or closed before the response ended (``status``
  499 then), including at shutdown. Implementations must not block; the caller logs and
  swallows an exception (the one guard), so a sharing bug never fails a request.
* :class:`AccountingHooks` is where **peers' traffic** is applied: the pool state
  (:class:`picker.scheduling.pool.PoolState`) implements it, and the director accounts its
  own traffic through the same two methods. Requests are keyed by ``(replica,
  request_id)``: two replicas routing the same client id at once are two requests.

Peer sharing (``picker/sharing``) sits between them: it publishes what the sink receives
and applies what peers published through the hooks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from picker.scheduling.api import RequestInfo

__all__ = ["AccountingHooks", "EventSink"]


@runtime_checkable
class EventSink(Protocol):
    def on_local_assignment(self, request: RequestInfo, address: str, now: float) -> None:
        """``request`` was sent to ``address`` (``ip:port``) at ``now`` (wall-clock seconds)."""

    def on_local_completion(
        self,
        request: RequestInfo,
        address: str,
        status: int,
        prompt_tokens: int,
        output_tokens: int,
        latency_s: float,
        ttft_s: float,
        now: float,
    ) -> None:
        """The request ended with HTTP ``status`` (499: cancelled/unknown) after ``latency_s``."""


class AccountingHooks(Protocol):
    """The pool-state hooks peers' events are applied through."""

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None: ...

    def on_completed(self, request_id: str, now: float, *, replica: str = "") -> None: ...

    def set_peer_rank(self, index: int, count: int, unseen: float = 1.0) -> None: ...
