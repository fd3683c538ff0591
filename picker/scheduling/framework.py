"""The scheduling framework: gather -> admit (shed) -> select (filters, scorers, picker).

One :class:`ProfileScheduler` is one named profile. Every profile shares the same outer
flow, so readiness, the candidate restriction, shedding, "stale ranks last" and the
never-raise guarantee are implemented once:

1. **gather** (one pass over the endpoints): drop endpoints that are not ready or not
   healthy, or outside ``request.candidates``; split the rest into *fresh* and *stale*
   (metrics older than the staleness threshold, or the scrape is failing). Nothing left
   -> 503.
2. **admit**: if the request's criticality is sheddable and every candidate is
   saturated (queue, KV or staleness) -> 429.
3. **select**: (large pools: a random window plus the prefix/adapter holders, see
   ``max_candidates``) the profile's selector orders the fresh group; if it yields fewer than
   ``1 + fallbacks`` endpoints, the stale group fills the rest. Stale endpoints are
   scored among themselves so they never distort the fresh group's normalization.

Per-endpoint values are computed in ``on_snapshot`` (see :mod:`.state`); if a decision
sees a snapshot object it has not digested yet (a caller that skips ``on_snapshot``, like
a unit test), it digests it on the spot. Snapshots are treated as immutable: pass a new
object (or call ``on_snapshot``) when the numbers change.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Protocol

from shared.schemas import EndpointSnapshot

from .api import Decision, EndpointView, RequestInfo
from .context import Context
from .filters import Filter
from .inflight import InflightTracker
from .pickers import Picker
from .prefix import PrefixIndex
from .scorers import Scorer
from .state import EndpointState, Thresholds

__all__ = ["ProfileScheduler", "ScoringSelector", "Selector"]

log = logging.getLogger("picker.scheduling")


class _ErrorLog:
    """Log a plugin failure the first time and then every 1,000th, so a bug cannot flood the logs."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, where: str, profile: str) -> None:
        n = self.counts.get(where, 0) + 1
        self.counts[where] = n
        if n == 1 or n % 1000 == 0:
            log.exception("scheduler plugin failed", extra={"plugin": where, "profile": profile, "count": n})


class Selector(Protocol):
    """Orders a group of endpoints: up to ``m`` distinct ones, best first."""

    def select(self, ctx: Context, group: list[EndpointState], m: int) -> list[EndpointState]: ...


class ScoringSelector:
    """Soft filters, then the weighted sum of scorers, then a picker."""

    def __init__(
        self,
        filters: Sequence[Filter] = (),
        scorers: Sequence[tuple[Scorer, float]] = (),
        picker: Picker | None = None,
        on_error: _ErrorLog | None = None,
        profile: str = "",
    ) -> None:
        from .pickers import MaxScorePicker

        self.filters = list(filters)
        # Weight 0 adds nothing to the totals; such a scorer is kept only when it produces
        # data (the loader drops it when no plugin of the profile consumes that data).
        self.scorers = [(s, float(w)) for s, w in scorers if w > 0 or getattr(s, "produces", ())]
        self.picker = picker or MaxScorePicker()
        self.on_error = on_error or _ErrorLog()
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
            idx = self.picker.pick(ctx, group, totals, m)
        except Exception:
            self.on_error(f"picker:{_label(self.picker)}", self.profile)
            idx = ctx.rng.sample(range(n), min(m, n))
        return [group[i] for i in idx]


class ProfileScheduler:
    """A named profile: the :class:`~.api.Scheduler` the ext_proc server and the simulation drive."""

    def __init__(
        self,
        name: str,
        selector: Selector,
        *,
        thresholds: Thresholds | None = None,
        shed: frozenset[str] = frozenset({"Sheddable"}),
        sheddable_unsaturated_only: bool = False,
        require_served_model: bool = True,
        fallbacks: int = 2,
        inflight: InflightTracker | None = None,
        prefix: PrefixIndex | None = None,
        default_output_tokens: int = 200,
        max_candidates: int = 0,
        rng: random.Random | None = None,
        on_error: _ErrorLog | None = None,
    ) -> None:
        self.name = name
        self.max_candidates = max(0, int(max_candidates))
        self.selector = selector
        self.thresholds = thresholds or Thresholds()
        self.shed = frozenset(shed)
        self.sheddable_unsaturated_only = sheddable_unsaturated_only
        self.require_served_model = require_served_model
        self.fallbacks = max(0, int(fallbacks))
        self.inflight = inflight or InflightTracker()
        self.prefix = prefix or PrefixIndex()
        self.default_output_tokens = default_output_tokens
        self.rng = rng or random.Random()
        self.on_error = on_error or _ErrorLog()
        self._states: dict[str, EndpointState] = {}
        self._base_models: dict[str, int] = {}  # model -> endpoints reporting it ("" = unknown)
        self.peer_index = 0
        self.peer_count = 1
        self.peer_unseen = 1.0

    def set_peer_rank(self, index: int, count: int, unseen: float = 1.0) -> None:
        """This replica is ``index`` (0-based) of ``count`` picker replicas sharing one view.

        ``unseen`` is how many of its peers' assignments a replica has typically not heard
        of yet (their rate times the propagation delay): the chance that a peer is choosing
        in the same window. The sharing layer calls it as peers come and go and traffic
        changes; pickers that spread near-simultaneous choices (``MaxScorePicker.peer_margin``)
        read it. Out-of-range values fall back to "alone" rather than raising.
        """
        if count < 1 or not 0 <= index < count:
            index, count = 0, 1
        self.peer_index = int(index)
        self.peer_count = int(count)
        self.peer_unseen = float(unseen) if unseen >= 0.0 else 1.0  # NaN fails >= too

    # -- the decision ------------------------------------------------------------------

    def schedule(self, request: RequestInfo, endpoints: Sequence[EndpointView], now: float) -> Decision:
        try:
            return self._schedule(request, endpoints, now)
        except Exception:
            self.on_error("schedule", self.name)
            return self._safe_choice(request, endpoints)

    def _schedule(self, request: RequestInfo, endpoints: Sequence[EndpointView], now: float) -> Decision:
        self.inflight.expire(now)
        fresh, stale = self._gather(request, endpoints, now)
        if self.require_served_model and request.target_model not in self._base_models:
            fresh, stale = _serving(request.target_model, fresh, stale)
        if not fresh and not stale:
            why = "no candidate endpoints" if endpoints else "no endpoints in the pool"
            if endpoints and request.candidates is not None:
                why = "no ready endpoint matches the candidate restriction"
            return Decision([], 503, why, self.name)
        th = self.thresholds
        if request.criticality in self.shed:
            if all(s.saturated(th, now) for s in fresh):
                return Decision([], 429, f"pool saturated: {request.criticality} request shed", self.name)
            if self.sheddable_unsaturated_only:
                fresh = _unsaturated(fresh, th)
                stale = []
        ctx = Context(
            request,
            now,
            self.rng,
            self.inflight,
            self.prefix,
            th,
            self._base_models,
            self.peer_index,
            self.peer_count,
            self.peer_unseen,
        )
        if self.max_candidates and len(fresh) > self.max_candidates:
            fresh = self._window(ctx, fresh)
        m = 1 + self.fallbacks
        chosen = self.selector.select(ctx, fresh, m) if fresh else []
        if len(chosen) < m and stale:
            chosen += self.selector.select(ctx, stale, m - len(chosen))
        if not chosen:  # a selector returned nothing for a non-empty pool: never leave empty-handed
            chosen = (fresh or stale)[:1]
        return Decision(_dedup(s.address for s in chosen), 200, "", self.name)

    def _gather(
        self, request: RequestInfo, endpoints: Sequence[EndpointView], now: float
    ) -> tuple[list[EndpointState], list[EndpointState]]:
        get = self._states.get
        cset = request.candidates
        fresh: list[EndpointState] = []
        stale: list[EndpointState] = []
        add_fresh = fresh.append
        add_stale = stale.append
        digest = self._digest
        # Two copies of the loop so the common case (no restriction) tests one flag less.
        if cset is None:
            for v in endpoints:
                st = get(v.address)
                if st is None or st.snap is not v.snapshot:
                    st = digest(v.address, v.snapshot, v.received_at)
                if st.ok:
                    if now <= st.fresh_until:
                        add_fresh(st)
                    else:
                        add_stale(st)
        else:
            for v in endpoints:
                st = get(v.address)
                if st is None or st.snap is not v.snapshot:
                    st = digest(v.address, v.snapshot, v.received_at)
                if st.ok and (st.address in cset or st.ip in cset):
                    if now <= st.fresh_until:
                        add_fresh(st)
                    else:
                        add_stale(st)
        return fresh, stale

    def _window(self, ctx: Context, group: list[EndpointState]) -> list[EndpointState]:
        """A large pool's candidates for scoring: a random window plus the affinity holders.

        Scoring every endpoint of a pool of thousands costs more than the decision is
        worth; the best of a few hundred random ones is nearly as good for balancing
        (the power of d choices), provided the endpoints that hold the request's prefix
        or run its adapter are always in (they are what affinity scorers look for).
        """
        k = self.max_candidates
        n = len(group)
        start = self.rng.randrange(n)
        sub = group[start : start + k]
        if len(sub) < k:
            sub += group[: k - len(sub)]
        members = set(sub)
        pool = set(group)
        extra: list[EndpointState] = []
        matches = ctx.prefix_matches()
        if matches:
            states = self._states
            for addr in matches:
                st = states.get(addr)
                if st is not None and st in pool and st not in members:
                    members.add(st)
                    extra.append(st)
                    if len(extra) >= k:
                        break
        target = ctx.request.target_model
        if target not in self._base_models:  # an adapter: keep the pods that run it
            for st in group:
                if target in st.lora_running and st not in members:
                    members.add(st)
                    extra.append(st)
        return sub + extra

    def _safe_choice(self, request: RequestInfo, endpoints: Sequence[EndpointView]) -> Decision:
        """After an internal error: any ready candidate, at random; the caller still gets an answer."""
        try:
            cset = request.candidates
            ok = [
                v.address
                for v in endpoints
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

    # -- accounting hooks --------------------------------------------------------------

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None:
        """A request went to ``address`` (from this replica or a peer): count it, index its prefix."""
        try:
            hashes = request.prefix_hashes
            st = self._states.get(address)
            bs = st.block_size if st is not None else 16
            cached = self.prefix.matched(address, hashes) * bs if hashes else 0
            prompt = max(0, request.prompt_tokens)
            out = request.expected_output_tokens
            tokens = max(0, prompt - cached) + (out if out > 0 else self.default_output_tokens)
            self.inflight.assign(request.request_id, address, tokens, now)
            if hashes:
                self.prefix.add(address, hashes)
        except Exception:
            self.on_error("on_assigned", self.name)

    def on_completed(self, request_id: str, now: float) -> None:
        try:
            self.inflight.complete(request_id, now)
        except Exception:
            self.on_error("on_completed", self.name)

    def on_snapshot(self, snapshot: EndpointSnapshot, now: float) -> None:
        try:
            self._digest(snapshot.address, snapshot, now)
            self.inflight.expire(now)
        except Exception:
            self.on_error("on_snapshot", self.name)

    def on_endpoint_removed(self, address: str, now: float) -> None:
        try:
            st = self._states.pop(address, None)
            if st is not None:
                self._count_model(st.model, -1)
            self.inflight.remove_endpoint(address)
            self.prefix.remove(address)
        except Exception:
            self.on_error("on_endpoint_removed", self.name)

    def _digest(self, address: str, snap: EndpointSnapshot, received_at: float) -> EndpointState:
        old = self._states.get(address)
        st = EndpointState(
            address, snap, received_at, self.inflight.load(address), self.thresholds, self.inflight.avg_tokens
        )
        self._states[address] = st
        if old is None or old.model != st.model:
            if old is not None:
                self._count_model(old.model, -1)
            self._count_model(st.model, +1)
        ts = snap.ts if isinstance(snap.ts, int | float) and snap.ts > 0 else received_at
        self.inflight.snapshot(address, ts)
        self.prefix.set_capacity(address, st.cap // st.block_size)
        return st

    def _count_model(self, model: str, delta: int) -> None:
        n = self._base_models.get(model, 0) + delta
        if n > 0:
            self._base_models[model] = n
        else:
            self._base_models.pop(model, None)

    # -- introspection (tests, debugging) ------------------------------------------------

    def endpoint_state(self, address: str) -> EndpointState | None:
        return self._states.get(address)


def _label(plugin: object) -> str:
    """A plugin's instance name, else its type name (plugins built outside the loader)."""
    return getattr(plugin, "name", "") or getattr(plugin, "type_name", "") or type(plugin).__name__


def _unsaturated(fresh: list[EndpointState], th: Thresholds) -> list[EndpointState]:
    """The fresh endpoints that pass the saturation test (``saturated()`` inlined: hot path)."""
    if not th.include_inflight:
        return [s for s in fresh if not s.sat_static]
    q, kv = th.queue, th.kv
    return [
        s
        for s in fresh
        if not s.sat_static
        and (not s.load.n or (s.waiting + s.load.n <= q and s.kv + s.load.tokens * s.inv_cap <= kv))
    ]


def _dedup(addresses) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for a in addresses:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


def _serving(
    target: str, fresh: list[EndpointState], stale: list[EndpointState]
) -> tuple[list[EndpointState], list[EndpointState]]:
    """Keep the endpoints that serve ``target`` (a LoRA adapter), or whose models are unknown.

    Soft: when no endpoint is known to serve it, every endpoint stays, and the model server
    gives the client its own answer (vLLM: 404). Base-model requests never get here.
    """
    kept_fresh = [s for s in fresh if s.served is None or target in s.served]
    kept_stale = [s for s in stale if s.served is None or target in s.served]
    if kept_fresh or kept_stale:
        return kept_fresh, kept_stale
    return fresh, stale
