"""Per target model, the completions every picker replica reported (the shared event stream).

The controller feeds it every :class:`~shared.schemas.Completion` of the pool (its own
replica's included: every replica publishes its traffic on its own subject and reads all of
them); only the models of running rollouts are kept, so memory is bounded by the
configuration, never by client input, and each model keeps at most ``max_samples`` of
its latest completions within ``max_age_s``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


def is_error(status: int) -> bool:
    """A failed request: any 4xx/5xx except 429 (shed by the gateway, not the model's fault)."""
    return status >= 400 and status != 429


@dataclass(frozen=True, slots=True)
class Summary:
    count: int = 0
    errors: int = 0
    p90_ttft: float = 0.0
    p90_ntpot: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def describe(self) -> dict:
        return {
            "n": self.count,
            "errors": self.errors,
            "p90_ttft_s": round(self.p90_ttft, 4),
            "p90_ntpot_s": round(self.p90_ntpot, 5),
        }


def p90(values: list[float]) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(0.9 * len(values)) - 1)]


class CompletionStats:
    def __init__(self, max_samples: int = 20_000, max_age_s: float = 3600.0) -> None:
        self.max_samples = max_samples
        self.max_age_s = max_age_s
        self.models: dict[str, deque[tuple[float, bool, float, float]]] = {}
        self.tracked: set[str] = set()

    def track(self, models: set[str]) -> None:
        """Keep only these target models (the stable and canary of every running rollout)."""
        self.tracked = set(models)
        for m in list(self.models):
            if m not in self.tracked:
                del self.models[m]

    def add(
        self, target: str, status: int, latency_s: float, ttft_s: float, output_tokens: int, ts: float
    ) -> None:
        if target not in self.tracked:
            return
        q = self.models.get(target)
        if q is None:
            q = self.models[target] = deque(maxlen=self.max_samples)
        err = is_error(status)
        ntpot = latency_s / output_tokens if output_tokens > 0 and not err else 0.0
        q.append((ts, err, ttft_s if not err else 0.0, ntpot))
        while q and q[0][0] < ts - self.max_age_s:
            q.popleft()

    def summary(self, target: str, since: float) -> Summary:
        q = self.models.get(target)
        if not q:
            return Summary()
        rows = [r for r in q if r[0] >= since]
        ok = [r for r in rows if not r[1]]
        return Summary(
            count=len(rows),
            errors=len(rows) - len(ok),
            p90_ttft=p90([r[2] for r in ok if r[2] > 0]),
            p90_ntpot=p90([r[3] for r in ok if r[3] > 0]),
        )
