"""The pool state: everything a decision reads, with one owner per datum.

:class:`PoolState` owns

* the **endpoint table**: the latest snapshot of every endpoint as received
  (:class:`~.api.EndpointView`) and its digest for the plugins (:class:`~.state.EndpointState`),
  in the order the endpoints first appeared (the order every decision iterates in);
* the **in-flight accounting** (:class:`~.inflight.InflightTracker`), this replica's and its
  peers' assignments alike, keyed by ``(replica, request_id)``;
* the **prefix index** (:class:`~.prefix.PrefixIndex`);
* the **peer rank** (this replica's place among the replicas sharing one view);
* the **decision clock** (``now``): the caller advances it (``advance``), so the
  simulation runs the same code in virtual time and nothing downstream reads a wall clock.

It is fed from the bus side: :class:`picker.view.PoolView` calls ``on_snapshot`` /
``on_endpoint_removed`` for the snapshots it accepts, the sharing layer applies peers'
events through ``on_assigned`` / ``on_completed`` / ``set_peer_rank``
(:class:`picker.hooks.AccountingHooks`), and the director accounts its own traffic through
the same two methods. Admission and the scheduler only read it.

Why the view *feeds* the state instead of being it: the view is the bus module's consumer
(decoding, the pool filter, :class:`shared.feed.SnapshotOrder`'s ordering and tombstone
memory, its counters, "bootstrapped"), which the simulation and the unit tests do not
need; the state is what a decision needs, with no transport in it. So the view keeps
the *rules* for which message is applied and the state keeps *what they said*: the
endpoint table lives here only, and ``PoolView.endpoints`` / ``list()`` read it.

The candidates of a request (ready, healthy, inside its restriction, split into fresh and
stale, narrowed to the pods serving its adapter) are computed once per request and
instant by :meth:`candidates`: admission and selection read the same lists. Every hook
is guarded: a failure is logged (first, then every 1,000th) and never reaches the bus.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from shared.schemas import EndpointSnapshot

from .api import EndpointView, RequestInfo
from .inflight import InflightTracker
from .prefix import PrefixIndex
from .state import EndpointState, Thresholds

__all__ = ["Candidates", "ErrorLog", "PoolState"]

log = logging.getLogger("picker.scheduling")


class ErrorLog:
    """Log a failure the first time and then every 1,000th, so a bug cannot flood the logs."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, where: str, profile: str) -> None:
        n = self.counts.get(where, 0) + 1
        self.counts[where] = n
        if n == 1 or n % 1000 == 0:
            log.exception("scheduler plugin failed", extra={"plugin": where, "profile": profile, "count": n})


class Candidates:
    """The endpoints that may serve one request, at one instant (read-only lists).

    ``fresh``: ready, healthy, inside the restriction, metrics fresh; ``stale``: the same
    with stale or failing metrics; ``why``: when both are empty, the reason for the 503.
    """

    __slots__ = ("fresh", "stale", "why")

    def __init__(self, fresh: list[EndpointState], stale: list[EndpointState], why: str = "") -> None:
        self.fresh = fresh
        self.stale = stale
        self.why = why

    def __bool__(self) -> bool:
        return bool(self.fresh or self.stale)


class _Gathered:
    """``PoolState``'s kept split of its ready endpoints (see ``PoolState._gather_all``)."""

    __slots__ = ("at", "fresh", "stale", "valid_until")

    def __init__(self, at: float, valid_until: float, fresh: list[EndpointState], stale: list[EndpointState]):
        self.at = at
        self.valid_until = valid_until
        self.fresh = fresh
        self.stale = stale


class PoolState:
    """Endpoints, in-flight load, prefix index and peer rank of one pool, as one replica knows them."""

    def __init__(
        self,
        *,
        thresholds: Thresholds | None = None,
        inflight: InflightTracker | None = None,
        prefix: PrefixIndex | None = None,
        default_output_tokens: int = 200,
        require_served_model: bool = True,
        name: str = "",
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name  # the profile it was built for (logs)
        self.thresholds = thresholds or Thresholds()
        self.inflight = inflight or InflightTracker()
        self.prefix = prefix or PrefixIndex()
        self.assign_hooks: list = []  # (request_id, address, now) -> None, after each assignment
        self.default_output_tokens = default_output_tokens
        # Adapter requests only see the pods that list the adapter (soft, see _serving).
        self.require_served_model = require_served_model
        self.on_error = on_error or ErrorLog()
        self.now = 0.0
        self.endpoints: dict[str, EndpointView] = {}
        self._states: dict[str, EndpointState] = {}
        self._list: list[EndpointView] | None = None
        self.base_models: dict[str, int] = {}  # model -> endpoints reporting it ("" = unknown)
        self.peer_index = 0
        self.peer_count = 1
        self.peer_unseen = 1.0
        self._version = 0  # bumped by every change that can change a request's candidates
        # Learners fed with every assignment (before it is counted) and every completion with
        # its outcome, local and peers' alike (picker.latency.LatencyPredictor).
        self.observers: list[Any] = []
        self._memo: tuple[Any, int, Candidates] | None = None
        # Every ready endpoint split into fresh and stale, kept across decisions until it
        # can have changed (see _gather); None: gather again.
        self._gathered: _Gathered | None = None

    def __len__(self) -> int:
        return len(self._states)

    # -- the clock --------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Set the decision clock (before admission and scheduling) and expire lost requests."""
        if now != self.now:
            self.now = now
            self._version += 1
        self.inflight.expire(now)

    # -- fed by the bus side ------------------------------------------------------------------

    def on_snapshot(self, snapshot: EndpointSnapshot, now: float) -> None:
        """A snapshot the view accepted, received at ``now``."""
        try:
            self._digest(snapshot.address, snapshot, now)
            self.inflight.expire(now)
        except Exception:
            self.on_error("on_snapshot", self.name)

    def on_endpoint_removed(self, address: str, now: float) -> None:
        """A tombstone: the endpoint, its extra load and its prefix entries go."""
        try:
            self.endpoints.pop(address, None)
            st = self._states.pop(address, None)
            self._gathered = None
            self._changed()
            if st is not None:
                self._count_model(st.model, -1)
            self.inflight.remove_endpoint(address)
            self.prefix.remove(address)
        except Exception:
            self.on_error("on_endpoint_removed", self.name)

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None:
        """``replica`` (this one or a peer) sent ``request`` to ``address``: count it, index its prefix."""
        try:
            hashes = request.prefix_hashes
            st = self._states.get(address)
            bs = st.block_size if st is not None else 16
            cached = self.prefix.matched(address, hashes) * bs if hashes else 0
            for obs in self.observers:
                obs.on_assigned(request, address, st, cached, now, replica)
            prompt = max(0, request.prompt_tokens)
            out = request.expected_output_tokens
            tokens = max(0, prompt - cached) + (out if out > 0 else self.default_output_tokens)
            self.inflight.assign(request.request_id, address, tokens, now, replica)
            if hashes:
                self.prefix.add(address, hashes)
            for hook in self.assign_hooks:  # e.g. the precise index's speculative entries
                hook(request.request_id, address, now)
        except Exception:
            self.on_error("on_assigned", self.name)

    def on_completed(
        self,
        request_id: str,
        now: float,
        *,
        replica: str = "",
        status: int = 0,
        ttft_s: float = 0.0,
        latency_s: float = 0.0,
        output_tokens: int = 0,
    ) -> None:
        """``replica``'s request ``request_id`` ended (unknown ids are ignored).

        The outcome (``status`` 0 = unknown, TTFT, latency, output tokens) goes to the observers.
        """
        try:
            if self.observers and status:
                self.on_outcome(request_id, replica, status, ttft_s, latency_s, output_tokens, now)
            self.inflight.complete(request_id, now, replica)
        except Exception:
            self.on_error("on_completed", self.name)

    def on_outcome(
        self,
        request_id: str,
        replica: str,
        status: int,
        ttft_s: float,
        latency_s: float,
        output_tokens: int,
        now: float,
    ) -> None:
        """How ``replica``'s request ended (a peer's Completion event): for the observers only."""
        for obs in self.observers:
            try:
                obs.on_completed(request_id, replica, status, ttft_s, latency_s, output_tokens, now)
            except Exception:
                self.on_error("observer", self.name)

    def set_peer_rank(self, index: int, count: int, unseen: float = 1.0) -> None:
        """This replica is ``index`` (0-based) of ``count`` picker replicas sharing one view.

        ``unseen`` is how many of its peers' assignments a replica has typically not heard
        of yet (their rate times the propagation delay): the chance that a peer is choosing
        in the same window. The sharing layer calls it as peers come and go and traffic
        changes; pickers that spread near-simultaneous choices (``MaxScoreChooser.peer_margin``)
        read it. Out-of-range values fall back to "alone" rather than raising.
        """
        if count < 1 or not 0 <= index < count:
            index, count = 0, 1
        self.peer_index = int(index)
        self.peer_count = int(count)
        self.peer_unseen = float(unseen) if unseen >= 0.0 else 1.0  # NaN fails >= too

    # -- read by admission and the scheduler ----------------------------------------------

    def views(self) -> list[EndpointView]:
        """Every endpoint as received, as a list rebuilt only after a change."""
        if self._list is None:
            self._list = list(self.endpoints.values())
        return self._list

    def endpoint_state(self, address: str) -> EndpointState | None:
        return self._states.get(address)

    def candidates(self, request: RequestInfo) -> Candidates:
        """The request's candidates now; computed once per request and state (admission, then selection)."""
        memo = self._memo
        if memo is not None and memo[0] is request and memo[1] == self._version:
            return memo[2]
        fresh, stale = self._gather(request, self.now)
        if self.require_served_model and request.target_model not in self.base_models:
            fresh, stale = _serving(request.target_model, fresh, stale)
        why = ""
        if not fresh and not stale:
            why = "no candidate endpoints" if self._states else "no endpoints in the pool"
            if self._states and request.candidates is not None:
                why = "no ready endpoint matches the candidate restriction"
        out = Candidates(fresh, stale, why)
        self._memo = (request, self._version, out)
        return out

    def _gather(self, request: RequestInfo, now: float) -> tuple[list[EndpointState], list[EndpointState]]:
        cset = request.candidates
        if cset is None:  # the common case: every ready endpoint, from the kept split
            g = self._gathered
            if g is None or not g.at <= now <= g.valid_until:
                g = self._gathered = self._gather_all(now)
            return list(g.fresh), list(g.stale)  # copies: callers may filter or reorder
        fresh: list[EndpointState] = []
        stale: list[EndpointState] = []
        for st in self._states.values():
            if st.ok and (st.address in cset or st.ip in cset):
                if now <= st.fresh_until:
                    fresh.append(st)
                else:
                    stale.append(st)
        return fresh, stale

    def _gather_all(self, now: float) -> _Gathered:
        """Every ready endpoint, fresh or stale at ``now``, in table order.

        The split stays right while time stays under the earliest ``fresh_until`` of the
        fresh ones (``valid_until``), no endpoint comes or goes or changes readiness, and
        no stale one gets a snapshot that could make it fresh; ``_digest`` and
        ``on_endpoint_removed`` drop it otherwise. At 1,000 endpoints this walk was the
        largest single cost of a decision and most of its tail (cache misses on objects
        replaced by the snapshot stream); kept, it runs a few times a second.
        """
        fresh: list[EndpointState] = []
        stale: list[EndpointState] = []
        add_fresh = fresh.append
        add_stale = stale.append
        until = math.inf
        for st in self._states.values():
            if st.ok:
                f = st.fresh_until
                if now <= f:
                    add_fresh(st)
                    if f < until:
                        until = f
                else:
                    add_stale(st)
        return _Gathered(now, until, fresh, stale)

    # -- the table --------------------------------------------------------------------------

    def _changed(self) -> None:
        self._list = None
        self._version += 1

    def _digest(self, address: str, snap: EndpointSnapshot, received_at: float) -> EndpointState:
        st = self._states.get(address)
        th, avg = self.thresholds, self.inflight.avg_tokens
        if st is None:
            st = EndpointState(address, snap, received_at, self.inflight.load(address), th, avg)
            self._states[address] = st
            self._gathered = None
            self._count_model(st.model, +1)
        else:
            was_ok, was_model, was_until = st.ok, st.model, st.fresh_until
            try:
                st.refresh(snap, received_at, th, avg)
            except Exception:
                # A snapshot that cannot be digested must not leave a half-updated state:
                # the last good one again (not yet replaced in ``endpoints``), then the error.
                last = self.endpoints.get(address)
                if last is not None:
                    st.refresh(last.snapshot, last.received_at, th, avg)
                raise
            g = self._gathered
            if g is not None:
                if st.ok != was_ok or (st.ok and was_until < g.at <= st.fresh_until):
                    self._gathered = None  # readiness changed, or a stale one may be fresh now
                elif st.ok and st.fresh_until < g.valid_until:
                    g.valid_until = st.fresh_until  # a fresh one turns stale sooner
            if was_model != st.model:
                self._count_model(was_model, -1)
                self._count_model(st.model, +1)
        view = self.endpoints.get(address)
        if view is None:
            self.endpoints[address] = EndpointView(address, snap, received_at)
        else:  # in place too: one young object fewer per snapshot
            view.snapshot = snap
            view.received_at = received_at
        self._changed()
        ts = snap.ts if isinstance(snap.ts, int | float) and snap.ts > 0 else received_at
        self.inflight.snapshot(address, ts)
        self.prefix.set_capacity(address, st.cap // st.block_size)
        return st

    def _count_model(self, model: str, delta: int) -> None:
        n = self.base_models.get(model, 0) + delta
        if n > 0:
            self.base_models[model] = n
        else:
            self.base_models.pop(model, None)


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
