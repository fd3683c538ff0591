"""Admission: may this request be scheduled now? 503 when nothing can serve it, 429 to shed.

The step between resolving a request and choosing its endpoint (the director runs
resolve -> admit -> schedule -> account). Today's rules, those of design.md section 3:

* no candidate (nothing ready and healthy inside the request's restriction) -> **503**;
* the request's criticality is in the profile's ``shed`` list and every *fresh* candidate
  is saturated (queue, KV or staleness; with ``include_inflight`` the load the pod does not
  report yet counts too) -> **429**. A pool with only stale candidates counts as saturated.

The saturation test is :class:`UtilizationDetector` (upstream's name for queue / KV /
staleness limits). Flow control (issue #16) replaces this object behind the same
``admit`` call: bands, fairness and queueing before dispatch, with a pluggable detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .api import Rejection, RequestInfo
from .pool import PoolState
from .state import EndpointState

__all__ = ["SaturationDetector", "SheddingAdmission", "UtilizationDetector"]


class SaturationDetector(Protocol):
    """Whether the pool has no room left for ``endpoints`` (a request's fresh candidates)."""

    def saturated(self, endpoints: Sequence[EndpointState], state: PoolState) -> bool: ...


class UtilizationDetector:
    """Saturated when every endpoint is: ``waiting`` or KV use over the state's thresholds, or stale."""

    def saturated(self, endpoints: Sequence[EndpointState], state: PoolState) -> bool:
        th = state.thresholds
        now = state.now
        return all(s.saturated(th, now) for s in endpoints)


class SheddingAdmission:
    """503 without candidates; 429 for a criticality in ``shed`` when the pool is saturated."""

    def __init__(
        self,
        shed: frozenset[str] = frozenset({"Sheddable"}),
        detector: SaturationDetector | None = None,
        profile: str = "",
    ) -> None:
        self.shed = frozenset(shed)
        self.detector = detector or UtilizationDetector()
        self.profile = profile

    def admit(self, request: RequestInfo, state: PoolState) -> Rejection | None:
        """Never raises: after an internal error the request is admitted (the scheduler still answers)."""
        try:
            cands = state.candidates(request)
            if not cands:
                return Rejection(503, cands.why, self.profile)
            if request.criticality in self.shed and self.detector.saturated(cands.fresh, state):
                return Rejection(429, f"pool saturated: {request.criticality} request shed", self.profile)
        except Exception:
            state.on_error("admit", self.profile)
        return None
