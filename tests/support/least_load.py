"""A minimal least-load scheduler: a deterministic test double for the picker's protocol tests.

It lets the ext_proc, view and service tests run the picker without depending on the
scheduling profiles: candidates restricted, ready endpoints first, then fresh metrics,
then the least ``waiting + running + in-flight``; Sheddable requests get 429 when every
candidate is saturated (queue > 5, KV > 0.8, or metrics older than ``staleness``). It
lived in ``picker/fallback.py`` until test doubles left the production packages (#15).
"""

from __future__ import annotations

from collections.abc import Sequence

from picker.scheduling.api import Decision, EndpointView, RequestInfo
from shared.schemas import EndpointSnapshot

__all__ = ["LeastLoadScheduler"]


class LeastLoadScheduler:
    """Least ``waiting + running + in-flight`` first; the scheduler interface, nothing more."""

    name = "least-load"

    def __init__(self, staleness: float = 0.2, queue: int = 5, kv: float = 0.8, fallbacks: int = 2) -> None:
        self.staleness = staleness
        self.queue = queue
        self.kv = kv
        self.fallbacks = fallbacks
        self.inflight: dict[str, str] = {}  # request id -> address
        self.load: dict[str, int] = {}

    def _saturated(self, ev: EndpointView, now: float) -> bool:
        s = ev.snapshot
        return s.waiting > self.queue or s.kv_usage > self.kv or ev.metrics_age(now) > self.staleness

    def schedule(self, request: RequestInfo, endpoints: Sequence[EndpointView], now: float) -> Decision:
        cands = [e for e in endpoints if request.candidates is None or e.address in request.candidates]
        if not cands:
            return Decision([], 503, "no candidate endpoints", self.name)
        if request.criticality == "Sheddable" and all(self._saturated(e, now) for e in cands):
            return Decision([], 429, "pool saturated", self.name)

        def key(e: EndpointView) -> tuple:
            s = e.snapshot
            return (
                not (s.ready and s.healthy),
                e.metrics_age(now) > self.staleness,
                s.waiting + s.running + self.load.get(e.address, 0),
                s.kv_usage,
            )

        ranked = sorted(cands, key=key)
        return Decision([e.address for e in ranked[: 1 + self.fallbacks]], 200, "", self.name)

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None:
        self.inflight[request.request_id] = address
        self.load[address] = self.load.get(address, 0) + 1

    def on_completed(self, request_id: str, now: float) -> None:
        address = self.inflight.pop(request_id, None)
        if address is not None and address in self.load:
            self.load[address] -= 1
            if self.load[address] <= 0:
                del self.load[address]

    def on_snapshot(self, snapshot: EndpointSnapshot, now: float) -> None:
        pass

    def on_endpoint_removed(self, address: str, now: float) -> None:
        self.load.pop(address, None)

    def set_peer_rank(self, index: int, count: int, unseen: float = 1.0) -> None:
        pass  # least-load has no near-ties to spread
