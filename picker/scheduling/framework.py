"""Selection: a profile's scheduler orders an admitted request's candidates.

One :class:`ProfileScheduler` is the selection step of one named profile. The request's
candidates come from the pool state (:meth:`~.pool.PoolState.candidates`: ready,
healthy, inside the restriction, split into *fresh* and *stale*), which admission has
already checked (503 without candidates, 429 when shed). Every profile shares the
same flow, so "stale ranks last" and the never-raise guarantee are implemented once:

1. a criticality in ``unsaturated_only`` (the profile's shed list, when it sets
   ``sheddable_unsaturated_only``) only sees the unsaturated fresh pods;
2. large pools: a random window plus the prefix/adapter holders (``max_candidates``);
3. the profile's selector (filters, weighted scorers, a chooser; or a selector plugin)
   orders the fresh group; if it yields fewer than ``1 + fallbacks`` endpoints, the stale
   group fills the rest. Stale endpoints are scored among themselves so they never
   distort the fresh group's normalization.

The scheduler holds no pool data: endpoints, in-flight load, the prefix index, the peer
rank and the clock are the state's. It keeps only its plugins and its rng.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from .api import Decision, RequestInfo
from .choosers import Chooser, MaxScoreChooser
from .context import Context
from .filters import Filter
from .pool import ErrorLog, PoolState
from .scorers import Scorer
from .state import EndpointState, Thresholds

__all__ = ["ProfileScheduler", "ScoringSelector", "Selector"]


class Selector(Protocol):
    """Orders a group of endpoints: up to ``m`` distinct ones, best first."""

    def select(self, ctx: Context, group: list[EndpointState], m: int) -> list[EndpointState]: ...


class ScoringSelector:
    """Soft filters, then the weighted sum of scorers, then a chooser (the config's "picker")."""

    def __init__(
        self,
        filters: Sequence[Filter] = (),
        scorers: Sequence[tuple[Scorer, float]] = (),
        chooser: Chooser | None = None,
        on_error: ErrorLog | None = None,
        profile: str = "",
    ) -> None:
        self.filters = list(filters)
        # Weight 0 adds nothing to the totals; such a scorer is kept only when it produces
        # data (the loader drops it when no plugin of the profile consumes that data).
        self.scorers = [(s, float(w)) for s, w in scorers if w > 0 or getattr(s, "produces", ())]
        self.chooser = chooser or MaxScoreChooser()
        self.on_error = on_error or ErrorLog()
        self.profile = profile

    def select(self, ctx: Context, group: list[EndpointState], m: int) -> list[EndpointState]:
        narrowed: Sequence[EndpointState] = group
        for f in self.filters:
            try:
                out = f.filter(ctx, narrowed)
            except Exception:
                self.on_error(f"filter:{_label(f)}", self.profile)
                continue
            if out:
                narrowed = out
        chosen = self._rank(ctx, narrowed, m)
        if len(chosen) < m and len(narrowed) < len(group):
            # The filters left too few for the fallbacks: rank the rest behind them.
            taken = {id(s) for s in chosen}
            rest = [s for s in group if id(s) not in taken]
            chosen += self._rank(ctx, rest, m - len(chosen))
        return chosen

    def _rank(self, ctx: Context, group: Sequence[EndpointState], m: int) -> list[EndpointState]:
        n = len(group)
        totals: list[float] | None = None
        w0 = 1.0
        for scorer, w in self.scorers:
            try:
                s = scorer.score(ctx, group)
            except Exception:
                self.on_error(f"scorer:{_label(scorer)}", self.profile)
                continue
            if s is None:
                continue
            if len(s) != n:
                self.on_error(f"scorer:{_label(scorer)}:length", self.profile)
                continue
            if not w:  # run for the data it produces only
                continue
            if totals is None:
                # A ranking does not change under a positive scale: take the first scores
                # as they are (one pass saved) and scale the others by w / w0.
                totals = s
                w0 = w
            else:
                r = w / w0
                totals = [t + r * x for t, x in zip(totals, s, strict=True)]
        ctx.score_unit = w0
        try:
            idx = self.chooser.pick(ctx, group, totals, m)
        except Exception:
            self.on_error(f"picker:{_label(self.chooser)}", self.profile)
            idx = ctx.rng.sample(range(n), min(m, n))
        return [group[i] for i in idx]


class ProfileScheduler:
    """A named profile's selection: the :class:`~.api.Scheduler` the director and the simulation call."""

    def __init__(
        self,
        name: str,
        selector: Selector,
        *,
        unsaturated_only: frozenset[str] = frozenset(),
        fallbacks: int = 2,
        max_candidates: int = 0,
        rng: random.Random | None = None,
        on_error: ErrorLog | None = None,
    ) -> None:
        self.name = name
        self.max_candidates = max(0, int(max_candidates))
        self.selector = selector
        # Criticalities that only see unsaturated pods (``sheddable_unsaturated_only``).
        self.unsaturated_only = frozenset(unsaturated_only)
        self.fallbacks = max(0, int(fallbacks))
        self.rng = rng or random.Random()
        self.on_error = on_error or ErrorLog()

    def schedule(self, request: RequestInfo, state: PoolState) -> Decision:
        try:
            return self._schedule(request, state)
        except Exception:
            self.on_error("schedule", self.name)
            return self._safe_choice(request, state)

    def _schedule(self, request: RequestInfo, state: PoolState) -> Decision:
        cands = state.candidates(request)
        fresh, stale = cands.fresh, cands.stale
        if not fresh and not stale:  # admission answers this first; never leave without an answer
            return Decision([], 503, cands.why, self.name)
        th = state.thresholds
        if request.criticality in self.unsaturated_only:
            fresh = _unsaturated(fresh, th)
            stale = []
            if not fresh:  # admission sheds first; alone, the scheduler still refuses rather than guess
                return Decision(
                    [], 429, f"no unsaturated endpoint for a {request.criticality} request", self.name
                )
        ctx = Context(
            request,
            state.now,
            self.rng,
            state.inflight,
            state.prefix,
            th,
            state.base_models,
            state.peer_index,
            state.peer_count,
            state.peer_unseen,
        )
        if self.max_candidates and len(fresh) > self.max_candidates:
            fresh = self._window(ctx, state, fresh)
        m = 1 + self.fallbacks
        chosen = self.selector.select(ctx, fresh, m) if fresh else []
        if ctx.rejection is not None:
            return Decision([], ctx.rejection[0], ctx.rejection[1], self.name)
        if len(chosen) < m and stale:
            chosen += self.selector.select(ctx, stale, m - len(chosen))
        if not chosen:  # a selector returned nothing for a non-empty pool: never leave empty-handed
            chosen = (fresh or stale)[:1]
        return Decision(_dedup(s.address for s in chosen), 200, "", self.name)

    def _window(self, ctx: Context, state: PoolState, group: list[EndpointState]) -> list[EndpointState]:
        """A large pool's candidates for scoring: a random window plus the affinity holders.

        Scoring every endpoint of a pool of thousands costs more than the decision is
        worth; the best of a few hundred random ones is nearly as good for balancing
        (the power of d choices), provided the endpoints that hold the request's prefix
        or run its adapter are in (they are what affinity scorers look for). Of the prefix
        holders, only the ``k // 8`` (at least 8) with the longest matches are added, and
        as many pods running the adapter (the next ones after the window): a popular
        system prompt or adapter is held by a good part of a large pool, and adding all of
        them would double the group the scorers walk for nothing, since the affinity
        scorers prefer the longest holders and the window samples the others anyway.
        """
        k = self.max_candidates
        n = len(group)
        start = self.rng.randrange(n)
        sub = group[start : start + k]
        if len(sub) < k:
            sub += group[: k - len(sub)]
        extra: list[EndpointState] = []
        matches = ctx.prefix_matches()
        target = ctx.request.target_model
        adapter = target not in state.base_models
        if not matches and not adapter:
            return sub
        members = set(sub)
        cap = max(8, k // 8)
        if matches:
            pool = set(group)
            for addr in matches:  # longest match first (PrefixIndex.match's order)
                st = state.endpoint_state(addr)
                if st is not None and st not in members and st in pool:
                    members.add(st)
                    extra.append(st)
                    if len(extra) >= cap:
                        break
        if adapter:  # pods running it, walking on past the window (random, like the window)
            found = 0
            for j in range(start + k, start + n):
                st = group[j % n]
                if target in st.lora_running and st not in members:
                    members.add(st)
                    extra.append(st)
                    found += 1
                    if found >= cap:
                        break
        return sub + extra

    def _safe_choice(self, request: RequestInfo, state: PoolState) -> Decision:
        """After an internal error: any ready candidate, at random; the caller still gets an answer."""
        try:
            cset = request.candidates
            ok = [
                v.address
                for v in state.views()
                if v.snapshot.ready
                and v.snapshot.healthy
                and (cset is None or v.address in cset or v.address.rsplit(":", 1)[0] in cset)
            ]
            if not ok:
                return Decision([], 503, "no candidate endpoints", self.name)
            picked = self.rng.sample(ok, min(len(ok), 1 + self.fallbacks))
            return Decision(_dedup(picked), 200, "fallback after internal error", self.name)
        except Exception:
            self.on_error("safe-choice", self.name)
            return Decision([], 500, "internal scheduler error", self.name)


def _label(plugin: object) -> str:
    """A plugin's instance name, else its type name (plugins built outside the loader)."""
    return getattr(plugin, "name", "") or getattr(plugin, "type_name", "") or type(plugin).__name__


def _unsaturated(fresh: list[EndpointState], th: Thresholds) -> list[EndpointState]:
    """The fresh endpoints that pass the saturation test (``saturated()`` inlined: hot path)."""
    if not th.include_inflight:
        return [s for s in fresh if not s.sat_static]
    return [
        s
        for s in fresh
        if not s.sat_static and (not s.load.n or (s.load.n <= s.queue_room and s.load.tokens <= s.kv_room))
    ]


def _dedup(addresses) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for a in addresses:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out
