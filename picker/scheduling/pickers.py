"""Pickers: turn a group's total scores into an ordered choice plus fallbacks.

A picker returns up to ``m`` distinct indexes into the group, best first. Every random
draw comes from the decision's seeded ``random.Random``, so a simulation replays exactly.
"""

from __future__ import annotations

import heapq

from .context import Context
from .params import Params

__all__ = ["PICKERS", "MaxScorePicker", "Picker", "RandomPicker", "RoundRobinPicker"]


class Picker:
    name = "picker"

    def pick(self, ctx: Context, n: int, totals: list[float] | None, m: int) -> list[int]:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def from_params(cls, p: Params) -> Picker:
        return cls()


class MaxScorePicker(Picker):
    """Highest total first; equal totals are ordered at random.

    One ``nlargest`` over floats (C) finds the m-th best score; only the few endpoints
    above it and the ties at it are touched in Python, so the cost stays O(n) at 1,000
    endpoints even when every endpoint ties (an idle pool).
    """

    name = "max-score"

    def pick(self, ctx: Context, n: int, totals: list[float] | None, m: int) -> list[int]:
        if m > n:
            m = n
        if m <= 0:
            return []
        rng = ctx.rng
        if totals is None:
            return rng.sample(range(n), m)
        if m == 1:
            best = max(totals)
            ties = [i for i, t in enumerate(totals) if t == best]
            return [ties[0] if len(ties) == 1 else ties[rng.randrange(len(ties))]]
        edge = heapq.nlargest(m, totals)[-1]
        top = [i for i, t in enumerate(totals) if t >= edge]
        above = [i for i in top if totals[i] > edge]
        ties = [i for i in top if totals[i] == edge] if above else top
        if len(above) > 1:
            keys = {i: (totals[i], rng.random()) for i in above}
            above.sort(key=keys.__getitem__, reverse=True)
        need = m - len(above)
        return above + (ties if len(ties) == need == 1 else rng.sample(ties, need))


class RandomPicker(Picker):
    """Uniformly random endpoints, scores ignored: the simplest baseline."""

    name = "random"

    def pick(self, ctx: Context, n: int, totals: list[float] | None, m: int) -> list[int]:
        return ctx.rng.sample(range(n), min(m, n))


class RoundRobinPicker(Picker):
    """The next endpoint in the group's order each time, scores ignored: the classic baseline."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, ctx: Context, n: int, totals: list[float] | None, m: int) -> list[int]:
        if n <= 0:
            return []
        start = self._next % n
        self._next = start + 1
        return [(start + k) % n for k in range(min(m, n))]


PICKERS: dict[str, type[Picker]] = {cls.name: cls for cls in (MaxScorePicker, RandomPicker, RoundRobinPicker)}
