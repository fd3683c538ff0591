"""A minimal least-load scheduler: a deterministic test double for the picker's protocol tests.

It lets the ext_proc, view and service tests run the picker without depending on the
scheduling profiles' plugins: among the candidates admission let through, ready
endpoints first, then fresh metrics, then the least ``waiting + running + in-flight``
(the in-flight requests the pool state counts that the pod's metrics do not show yet).
:func:`least_load_profile` puts it behind the real pool state and the real admission
(Sheddable requests get 429 when every candidate is saturated: queue > 5, KV > 0.8, or
metrics older than ``staleness``). It lived in ``picker/fallback.py`` until test doubles
left the production packages (#15).
"""

from __future__ import annotations

from picker.scheduling import Decision, PoolState, Profile, RequestInfo, SheddingAdmission
from picker.scheduling.state import Thresholds

__all__ = ["LeastLoadScheduler", "least_load_profile"]


class LeastLoadScheduler:
    """Least ``waiting + running + in-flight`` first; the scheduler interface, nothing more."""

    name = "least-load"

    def __init__(self, staleness: float = 0.2, fallbacks: int = 2) -> None:
        self.staleness = staleness
        self.fallbacks = fallbacks

    def schedule(self, request: RequestInfo, state: PoolState) -> Decision:
        now = state.now
        cands = [e for e in state.views() if request.candidates is None or e.address in request.candidates]
        if not cands:
            return Decision([], 503, "no candidate endpoints", self.name)

        def key(e) -> tuple:
            s = e.snapshot
            return (
                not (s.ready and s.healthy),
                e.metrics_age(now) > self.staleness,
                s.waiting + s.running + state.inflight.extra(e.address)[0],
                s.kv_usage,
            )

        ranked = sorted(cands, key=key)
        return Decision([e.address for e in ranked[: 1 + self.fallbacks]], 200, "", self.name)


def least_load_profile(staleness: float = 0.2, fallbacks: int = 2) -> Profile:
    """The real pool state and admission (its saturation limits: queue 5, KV 0.8, ``staleness``)."""
    state = PoolState(thresholds=Thresholds(staleness=staleness), name="least-load")
    return Profile("least-load", state, SheddingAdmission(), LeastLoadScheduler(staleness, fallbacks))
