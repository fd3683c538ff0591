"""Choosers: turn a group's total scores into an ordered choice plus fallbacks.

Upstream's EPP calls this plugin role a "picker", and so do the profile configs
(``plugins: - type: max-score`` in a profile's list is its picker). In the code the role is
a :class:`Chooser`, because "Picker" is the name of the service. A chooser returns up to
``m`` distinct indexes into the group, best first. Every random draw comes from the
decision's seeded ``random.Random``, so a simulation replays exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from .context import Context
from .params import Params
from .plugin import Plugin, register
from .state import EndpointState

__all__ = ["Chooser", "MaxScoreChooser", "RandomChooser", "RoundRobinChooser"]

Group = Sequence[EndpointState]


class Chooser(Plugin):
    """Base class: up to ``m`` distinct indexes into ``group``, best first (``totals``: None = all equal)."""

    def pick(self, ctx: Context, group: Group, totals: list[float] | None, m: int) -> list[int]:
        raise NotImplementedError  # pragma: no cover


@register("max-score")
class MaxScoreChooser(Chooser):
    """Highest total first; equal totals are ordered at random.

    One ``nlargest`` over floats (C) finds the m-th best score; only the few endpoints
    above it and the ties at it are touched in Python, so the cost stays O(n) at 1,000
    endpoints even when every endpoint ties (an idle pool).

    ``peer_margin`` (score points, the unit of the profile's weights; 0 = off) is for
    several picker replicas sharing one view. Their views agree, so a max-score choice
    is the same pod on every replica, and the requests two replicas place within the
    few milliseconds before they hear of each other's choice land on that pod together
    (a batched prefill: a worse TTFT). With ``peer_margin``, replica ``i`` of ``n``
    (``PoolState.set_peer_rank``; ranks come from the sharing layer) takes the
    ``i``-th best of the endpoints within the margin of the best, ordered the same way
    on every replica (total, then address): near-simultaneous choices of different
    replicas go to different pods, while a pod that is clearly better (an idle pod among
    busy ones) is still every replica's choice, and a request never leaves the pods that
    hold its prefix. The margin is scaled by the peers' assignments a replica has
    typically not heard of yet (``unseen``, at most 1): when peers rarely choose in the
    same window, a replica gives up little for a collision that rarely happens. With
    one replica it is plain max-score.
    """

    def __init__(self, peer_margin: float = 0.0) -> None:
        self.peer_margin = peer_margin

    def pick(self, ctx: Context, group: Group, totals: list[float] | None, m: int) -> list[int]:
        n = len(group)
        if m > n:
            m = n
        if m <= 0:
            return []
        if ctx.peer_count > 1 and n > 1:
            # The margin shrinks with the chance that a peer is choosing right now.
            margin = self.peer_margin * (ctx.peer_unseen if ctx.peer_unseen < 1.0 else 1.0)
            if margin > 0.0:
                return self._peer_pick(ctx, group, totals, m, margin)
        return self._max(ctx, n, totals, m)

    def _max(self, ctx: Context, n: int, totals: list[float] | None, m: int) -> list[int]:
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

    def _peer_pick(
        self, ctx: Context, group: Group, totals: list[float] | None, m: int, margin: float
    ) -> list[int]:
        """This replica's rank among the near-best, in an order every replica computes alike."""
        if totals is None:  # every endpoint scored the same: all of them are near-best
            near: Sequence[int] = range(len(group))
        else:
            # Totals are in units of the first scorer's weight (see ScoringSelector._rank).
            best = max(totals)
            edge = best - margin / ctx.score_unit
            near = [i for i, t in enumerate(totals) if t >= edge]
            if len(near) > 1 and ctx.request.prefix_hashes:
                # Spread over load, never away from the cache: keep the pods that hold at
                # least as much of the prompt as the best one does.
                held = dict(ctx.prefix_hits(group))
                if held:
                    need = max(held.get(i, 0) for i in near if totals[i] == best)
                    near = [i for i in near if held.get(i, 0) >= need]

        def key(i: int) -> tuple[float, str]:
            return (-totals[i] if totals is not None else 0.0, group[i].address)

        choice = heapq.nsmallest(ctx.peer_index % len(near) + 1, near, key=key)[-1]
        if m == 1:
            return [choice]
        rest = [i for i in self._max(ctx, len(group), totals, m) if i != choice]
        return [choice, *rest[: m - 1]]

    @classmethod
    def from_params(cls, p: Params) -> MaxScoreChooser:
        out = cls(peer_margin=p.number("peer_margin", 0.0, lo=0.0))
        p.done()
        return out


@register("random")
class RandomChooser(Chooser):
    """Uniformly random endpoints, scores ignored: the simplest baseline."""

    def pick(self, ctx: Context, group: Group, totals: list[float] | None, m: int) -> list[int]:
        return ctx.rng.sample(range(len(group)), min(m, len(group)))


@register("round-robin")
class RoundRobinChooser(Chooser):
    """The next endpoint in the group's order each time, scores ignored: the classic baseline."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, ctx: Context, group: Group, totals: list[float] | None, m: int) -> list[int]:
        n = len(group)
        if n <= 0:
            return []
        start = self._next % n
        self._next = start + 1
        return [(start + k) % n for k in range(min(m, n))]
