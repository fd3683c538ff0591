"""The hook through which peer sharing (``picker/sharing``) sees this replica's traffic.

The ext_proc path calls an optional :class:`EventSink` synchronously, on the event
loop, right after the scheduler's own accounting:

* ``on_local_assignment`` once per routed request (never for requests answered with an
  error, nor for headers-only requests, which carry no model work);
* ``on_local_completion`` exactly once for every assignment: when the response ends,
  when the model server answers an error status, or when the stream is cancelled or
  closed before the response ended (``status`` 499 then), including at shutdown.

Implementations must not block and should not raise; an exception is logged and
swallowed so that a sharing bug never fails a request.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from picker.scheduling.api import RequestInfo

__all__ = ["EventSink"]


@runtime_checkable
class EventSink(Protocol):
    def on_local_assignment(self, request: RequestInfo, address: str, now: float) -> None:
        """``request`` was sent to ``address`` (``ip:port``) at ``now`` (wall-clock seconds)."""

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
    ) -> None:
        """The request ended with HTTP ``status`` (499: cancelled/unknown) after ``latency_s``."""
