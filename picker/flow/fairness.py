"""Attained service per flow for least-attained-service fairness: tokens, decaying with a half-life.

A flow's service is the tokens the pool gave it: prompt tokens when dispatched, output
tokens (weighted ``output_weight``, 2 as llm-d) when the response ends, all decaying with a
half-life so that a flow's past does not weigh forever. Values are stored with the time
they were last updated and decayed on read, so nothing runs per tick.

Pool-wide, each replica also adds the service its peers report (:meth:`add`), so a tenant
spread over four replicas is charged once for all of its traffic, not once per replica.
The table is bounded: past ``max_flows`` the least-served flows are dropped (they would
rank first anyway, and a dropped flow simply starts again from zero).
"""

from __future__ import annotations

import math

__all__ = ["AttainedService"]


class AttainedService:
    def __init__(self, half_life_s: float = 60.0, output_weight: float = 2.0, max_flows: int = 4096) -> None:
        self.rate = math.log(2) / half_life_s
        self.output_weight = output_weight
        self.max_flows = max_flows
        self._v: dict[str, tuple[float, float]] = {}  # flow -> (value, at)
        self.now = 0.0
        self.pending: dict[str, float] = {}  # local service not yet published to the peers

    def value(self, flow: str, now: float | None = None) -> float:
        e = self._v.get(flow)
        if e is None:
            return 0.0
        t = self.now if now is None else now
        return e[0] * math.exp(-self.rate * max(0.0, t - e[1]))

    def add(self, flow: str, tokens: float, now: float, local: bool = True) -> None:
        if tokens <= 0:
            return
        self._v[flow] = (self.value(flow, now) + tokens, now)
        if local:
            self.pending[flow] = self.pending.get(flow, 0.0) + tokens
            if len(self.pending) > self.max_flows:
                self.pending.pop(next(iter(self.pending)))
        if len(self._v) > self.max_flows:
            self._trim(now)

    def dispatched(self, flow: str, prompt_tokens: int, now: float) -> None:
        self.add(flow, float(prompt_tokens), now)

    def completed(self, flow: str, output_tokens: int, now: float) -> None:
        self.add(flow, self.output_weight * output_tokens, now)

    def take_pending(self) -> dict[str, float]:
        out, self.pending = self.pending, {}
        return out

    def __len__(self) -> int:
        return len(self._v)

    def _trim(self, now: float) -> None:
        keep = sorted(self._v, key=lambda f: self.value(f, now), reverse=True)[: self.max_flows // 2]
        self._v = {f: self._v[f] for f in keep}
