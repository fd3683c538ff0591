"""A profile as built: its pool state, its admission and its scheduler, and the order they run in.

A profile of the config (``profiles.yaml``) sets all three: the state's thresholds,
in-flight and prefix settings, admission's shed list, the scheduler's plugins. The
director calls the steps one by one (resolve -> admit -> schedule -> account);
:meth:`Profile.decide` is the same two middle steps for callers with nothing in between
(the simulation, benchmarks, tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import Admission, Decision, RequestInfo, Scheduler
from .pool import PoolState

__all__ = ["Profile"]


@dataclass
class Profile:
    name: str
    state: PoolState
    admission: Admission
    scheduler: Scheduler
    flow: Any = None  # picker.flow.config.FlowConfig: the profile's flow_control block

    def decide(self, request: RequestInfo, now: float) -> Decision:
        """Advance the state's clock to ``now``, admit, schedule. Accounting is the caller's."""
        state = self.state
        state.advance(now)
        rejection = self.admission.admit(request, state)
        if rejection is not None:
            return rejection.decision()
        return self.scheduler.schedule(request, state)
