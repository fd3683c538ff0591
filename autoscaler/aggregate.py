"""Per-model load, aggregated from the collectors' snapshots and the pickers' events.

This module is pure state (no I/O, an injectable clock) so every rule below is unit
tested without NATS. A *model* is what a model server serves under its own name: the
base model a pod reports, or one LoRA adapter (``lora.running`` in the snapshot, the
assignment's ``target_model``). Series are keyed by ``(namespace, pool, target_model)``;
the ``model_name`` label is the client-facing name declared by the InferenceModels
(:meth:`Aggregator.declare_names`), else the one the pickers last mapped to the target.

Rules, each chosen so that the HPA never acts on a number it should not trust:

* **Snapshots and events** follow :mod:`shared.feed`'s rulebook, the same the pickers
  apply: per endpoint ``(namespace, pool, address)``, a reordered snapshot, a stale
  epoch's or one older than a tombstone is dropped (:class:`~shared.feed.SnapshotOrder`);
  per request ``(replica, request_id)``, a replayed or duplicated event counts once, a
  completion that overtakes its assignment cancels it, and a later assignment under a
  completed id is a new request (:class:`~shared.feed.EventLedger`; ids are remembered for
  ``done_ttl``, longer than the event stream's 30 s replay). A snapshot older than
  ``staleness`` (by its collector ``ts``) stops counting.
* **In-flight** = applied assignments minus completions. Entries expire ``inflight_ttl``
  after they were seen, so the requests of a picker that died without publishing
  completions do not pin replicas up forever.
* **Waiting** is the ``waiting`` of the ready, healthy pods serving the model. A pod that
  serves several models has one queue; it is split between them in proportion to the
  requests the pickers have in flight on that pod per model (the best available proxy
  for the queue's mix). With no in-flight information, the queue goes to the adapters
  the pod reports in ``lora.waiting`` (evenly), or else to its base model.
* **Arrival rate** and **output tokens/s** are counts over a sliding ``window`` divided
  by the window. Events are placed at their picker timestamp, clamped into
  ``[now - window, now]`` and made non-decreasing per model, so a replay of the last
  window after a restart rebuilds the rate instead of spiking it.
* **KV-cache use** is the mean over the ready, healthy endpoints serving the model;
  **ready replicas** counts those pods.
* **Freshness:** a model gets values only while it has a fresh snapshot (any readiness)
  or an event within the window. Otherwise it has *no* value: an old number presented
  as current would make the HPA scale on a past that no longer exists.
* **Bounded:** model names in events come from clients. A target that no InferenceModel
  declares and no pod serves is tracked under its own name only while fewer than
  ``max_unknown_models`` such targets are live; beyond, it counts under the target
  :data:`OTHER` of its pool. Open requests are capped at ``max_flights`` (the oldest is
  forgotten first) and the request ledger at ``max_flights`` too; every table's size is
  exported (:meth:`Aggregator.tables`).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from shared.feed import EndpointKey, EventLedger, SnapshotOrder, endpoint_key, event_time, events_of
from shared.schemas import Assignment, Completion, EndpointSnapshot, EventBatch, Tombstone
from shared.subjects import Origin

INFLIGHT = "infergate-inflight-requests"
WAITING = "infergate-waiting-requests"
ARRIVAL_RATE = "infergate-arrival-rate"
OUTPUT_TOKENS = "infergate-output-tokens-per-second"
KV_CACHE = "infergate-kv-cache-usage"
READY_REPLICAS = "infergate-ready-replicas"
OTHER = "other"  # the target of models past the unknown-model bound
FLOW_QUEUE = "infergate-flow-control-queue-length"

METRICS: dict[str, str] = {
    INFLIGHT: "requests assigned by the pickers and not completed yet",
    WAITING: "requests queued in the model servers (vllm:num_requests_waiting), attributed per model",
    ARRIVAL_RATE: "requests assigned per second over the sliding window",
    OUTPUT_TOKENS: "output tokens completed per second over the sliding window",
    KV_CACHE: "mean KV-cache use (0..1) of the ready, healthy pods serving the model",
    READY_REPLICAS: "ready, healthy pods serving the model",
    FLOW_QUEUE: "requests waiting in the pickers' flow control, all replicas (scale from zero)",
}


class ModelKey(NamedTuple):
    namespace: str
    pool: str
    target_model: str


class Series(NamedTuple):
    metric: str
    namespace: str
    labels: dict[str, str]
    value: float
    ts: float


@dataclass(slots=True)
class _Flight:
    key: ModelKey
    address: str
    seen: float


@dataclass(slots=True)
class _Window:
    """Timestamps (and weights) of one model's events inside the sliding window."""

    arrivals: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    last_t: float = 0.0
    last_event: float = 0.0  # receive time, for freshness

    def place(self, ts: float, now: float, window: float) -> float:
        t = min(now, max(ts or now, now - window, self.last_t))
        self.last_t = t
        self.last_event = now
        return t

    def trim(self, cutoff: float) -> None:
        while self.arrivals and self.arrivals[0] < cutoff:
            self.arrivals.popleft()
        while self.tokens and self.tokens[0][0] < cutoff:
            self.token_sum -= self.tokens.popleft()[1]


class Aggregator:
    """All the state behind the served metrics; feed it messages, ask it for :meth:`series`."""

    def __init__(
        self,
        *,
        window: float = 30.0,
        staleness: float = 10.0,
        inflight_ttl: float = 300.0,
        done_ttl: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_unknown_models: int = 100,
        max_flights: int = 200_000,
    ) -> None:
        if window <= 0 or staleness <= 0 or inflight_ttl <= 0:
            raise ValueError("window, staleness and inflight_ttl must be positive")
        self.window, self.staleness, self.inflight_ttl = window, staleness, inflight_ttl
        # Completed ids are remembered only to ignore replays (the event stream keeps 30 s) and
        # duplicates; a bound much shorter than the in-flight TTL keeps memory at ~rate x 60 s.
        self.done_ttl = max(done_ttl, window)
        self.clock = clock
        self._endpoints: dict[EndpointKey, EndpointSnapshot] = {}
        self._order = SnapshotOrder()
        self.max_unknown_models = max(0, max_unknown_models)
        self.max_flights = max(1, max_flights)
        self._ledger = EventLedger(self.done_ttl, max_entries=self.max_flights)
        self._served: set[ModelKey] = set()  # models some snapshot reports (rebuilt by housekeep)
        self._unknown: set[ModelKey] = set()  # tracked models neither served nor declared
        self._flights: dict[tuple[str, str], _Flight] = {}  # (replica, request_id) -> open request
        self._expiry: deque[tuple[float, tuple[str, str]]] = deque()  # (seen, key) of assignments
        self._inflight: dict[ModelKey, int] = {}
        self._inflight_at: dict[str, dict[ModelKey, int]] = {}  # address -> per-model in flight
        self._windows: dict[ModelKey, _Window] = {}
        self._names: dict[ModelKey, str] = {}  # target -> client-facing model name (latest seen)
        self._declared: dict[ModelKey, str] = {}  # target -> modelName from InferenceModels
        # (namespace, pool, replica) -> (queued per target model, received at): flow control
        self._flow: dict[tuple[str, str, str], tuple[dict[str, int], float]] = {}
        self.counters: dict[str, int] = {
            "snapshots": 0,
            "tombstones": 0,
            "reordered": 0,
            "invalid": 0,
            "assignments": 0,
            "completions": 0,
            "duplicates": 0,
            "expired": 0,
            "evicted": 0,
            "folded": 0,
        }

    # ---- endpoint snapshots -------------------------------------------------------------

    def on_endpoint(self, msg: EndpointSnapshot | Tombstone, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if not self._order.plausible(msg, now):
            self.counters["invalid"] += 1
            return
        if not self._order.admit(msg, now):
            self.counters["reordered"] += 1
            return
        key = endpoint_key(msg)
        if isinstance(msg, Tombstone):
            self.counters["tombstones"] += 1
            self._endpoints.pop(key, None)
            return
        self.counters["snapshots"] += 1
        self._endpoints[key] = msg
        for target in _served(msg):
            self._served.add(ModelKey(msg.namespace, msg.pool, target))

    # ---- picker events ------------------------------------------------------------------

    def on_event(
        self,
        msg: Assignment | Completion | EventBatch,
        now: float | None = None,
        *,
        origin: Origin | None = None,
    ) -> None:
        """Apply one event or a batch; ``origin`` (the parsed subject) fills what batched events omit."""
        now = self.clock() if now is None else now
        for ev in events_of(msg, origin):
            if isinstance(ev, Assignment):
                self._assign(ev, now)
            else:
                self._complete(ev, now)
        self._expire(now)

    def _assign(self, ev: Assignment, now: float) -> None:
        target = ev.target_model or ev.model
        if not target:  # nothing to attribute it to
            return
        if not self._ledger.assign(ev.replica, ev.request_id, event_time(ev, now)):
            self.counters["duplicates"] += 1
            return
        self.counters["assignments"] += 1
        rkey = (ev.replica, ev.request_id)
        old = self._flights.pop(rkey, None)
        if old is not None:  # the same id assigned again while open: the old request is over
            self._release(old)
        key = self._bound(ModelKey(ev.namespace, ev.pool, target))
        if ev.model and key.target_model != OTHER:
            self._names[key] = ev.model
        while len(self._flights) >= self.max_flights and self._expiry:
            _, oldest = self._expiry.popleft()
            flight = self._flights.pop(oldest, None)
            if flight is not None:
                self.counters["evicted"] += 1
                self._release(flight)
        self._flights[rkey] = _Flight(key, ev.address, now)
        self._expiry.append((now, rkey))
        self._inflight[key] = self._inflight.get(key, 0) + 1
        at = self._inflight_at.setdefault(ev.address, {})
        at[key] = at.get(key, 0) + 1
        w = self._window(key)
        w.arrivals.append(w.place(ev.ts, now, self.window))

    def _complete(self, ev: Completion, now: float) -> None:
        if not self._ledger.complete(ev.replica, ev.request_id, event_time(ev, now)):
            self.counters["duplicates"] += 1
            return
        self.counters["completions"] += 1
        flight = self._flights.pop((ev.replica, ev.request_id), None)
        if flight is not None:
            key = flight.key
            self._release(flight)
        else:
            target = ev.target_model or ev.model
            if not target:
                return
            key = self._bound(ModelKey(ev.namespace, ev.pool, target))
        w = self._window(key)
        t = w.place(ev.ts, now, self.window)
        if ev.output_tokens > 0:
            w.tokens.append((t, ev.output_tokens))
            w.token_sum += ev.output_tokens

    def _release(self, flight: _Flight) -> None:
        left = self._inflight[flight.key] - 1
        if left:
            self._inflight[flight.key] = left
        else:
            del self._inflight[flight.key]
        at = self._inflight_at[flight.address]
        at[flight.key] -= 1
        if not at[flight.key]:
            del at[flight.key]
            if not at:
                del self._inflight_at[flight.address]

    def _expire(self, now: float) -> None:
        self._ledger.expire(now)
        cutoff = now - self.inflight_ttl
        while self._expiry and self._expiry[0][0] < cutoff:
            seen, rkey = self._expiry.popleft()
            flight = self._flights.get(rkey)
            if flight is not None and flight.seen <= seen:
                del self._flights[rkey]
                self.counters["expired"] += 1
                self._release(flight)

    def _bound(self, key: ModelKey) -> ModelKey:
        """``key``, or its pool's OTHER when it is one unknown model too many."""
        if key in self._unknown or key in self._served or key in self._declared:
            return key
        if len(self._unknown) >= self.max_unknown_models:
            self.counters["folded"] += 1
            key = ModelKey(key.namespace, key.pool, OTHER)
        self._unknown.add(key)
        return key

    def tables(self) -> dict[str, tuple[Callable[[], int], int, Callable[[], int]]]:
        """Each bounded table: (size now, bound (0: bounded by time or by the pool), evicted so far)."""
        c = self.counters
        return {
            "endpoints": (lambda: len(self._endpoints), 0, lambda: 0),
            "open_requests": (lambda: len(self._flights), self.max_flights, lambda: c["evicted"]),
            "request_ledger": (lambda: len(self._ledger), self.max_flights, lambda: self._ledger.evicted),
            "models": (lambda: len(self._windows.keys() | self._inflight.keys()), 0, lambda: 0),
            "unknown_models": (lambda: len(self._unknown), self.max_unknown_models, lambda: c["folded"]),
            "model_names": (lambda: len(self._names), 0, lambda: 0),
        }

    def _window(self, key: ModelKey) -> _Window:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        return w

    def declare_names(self, names: dict[ModelKey, str]) -> None:
        """Client-facing names from the InferenceModels; they win over names learned from events."""
        self._declared = dict(names)

    def model_name(self, key: ModelKey) -> str:
        return self._declared.get(key) or self._names.get(key) or key.target_model

    # ---- flow control (picker replicas' queues) ------------------------------------------

    def on_flow(
        self, namespace: str, pool: str, replica: str, queued: dict[str, int], now: float | None = None
    ) -> None:
        """A picker replica's flow-control message: its queue length per target model."""
        now = self.clock() if now is None else now
        clean = {m: int(n) for m, n in list(queued.items())[:256] if isinstance(m, str) and m and n > 0}
        key = (namespace, pool, replica)
        if key in self._flow or len(self._flow) < 4096:
            self._flow[key] = (clean, now)

    def _flow_queues(self, now: float) -> dict[ModelKey, float]:
        out: dict[ModelKey, float] = {}
        limit = now - self.staleness
        for key in [k for k, (_, at) in self._flow.items() if at < limit]:
            del self._flow[key]  # a replica gone silent: its queue went with it
        for (ns, pool, _), (queued, _) in self._flow.items():
            for model, n in queued.items():
                mk = ModelKey(ns, pool, model)
                out[mk] = out.get(mk, 0.0) + n
        return out

    # ---- the served view ----------------------------------------------------------------

    def inflight(self, key: ModelKey) -> int:
        return self._inflight.get(key, 0)

    def housekeep(self, now: float | None = None) -> None:
        """Drop expired entries and empty windows; :meth:`series` does it too, this bounds idle memory."""
        now = self.clock() if now is None else now
        self._expire(now)
        cutoff = now - self.window
        for key, w in list(self._windows.items()):
            w.trim(cutoff)
            if w.last_event < cutoff and not w.arrivals and not w.tokens:
                del self._windows[key]
        limit = now - self.staleness
        for key in [k for k, snap in self._endpoints.items() if snap.ts < limit - 5 * self.staleness]:
            del self._endpoints[key]  # long silent (a collector that died without tombstones)
            self._order.forget(key)
        # A snapshot older than a tombstone this old would be stale anyway: forget the marks.
        self._order.forget_tombstones(limit)
        # Models nobody serves, sends or has in flight any more leave every per-model table.
        self._served = {
            ModelKey(s.namespace, s.pool, t) for s in self._endpoints.values() for t in _served(s)
        }
        live = self._windows.keys() | self._inflight.keys()
        self._unknown = {k for k in self._unknown if k in live and k not in self._served}
        for key in [k for k in self._names if k not in live]:
            del self._names[key]

    def series(self, now: float | None = None) -> list[Series]:
        """Every metric of every model with fresh input, computed now (cheap: O(endpoints + models))."""
        now = self.clock() if now is None else now
        self.housekeep(now)
        fresh_ts: dict[ModelKey, float] = {}
        serving: dict[ModelKey, list[EndpointSnapshot]] = {}
        pods: dict[ModelKey, set[str]] = {}
        waiting: dict[ModelKey, float] = {}
        for snap in self._fresh_endpoints(now):
            models = _served(snap)
            if not models:
                continue
            ok = snap.ready and snap.healthy
            for target in models:
                key = ModelKey(snap.namespace, snap.pool, target)
                fresh_ts[key] = max(fresh_ts.get(key, 0.0), min(snap.ts, now))
                if ok:
                    serving.setdefault(key, []).append(snap)
                    pods.setdefault(key, set()).add(snap.pod)
            if ok and snap.waiting > 0:
                for key, share in self._attribute(snap).items():
                    waiting[key] = waiting.get(key, 0.0) + share * snap.waiting
                    fresh_ts.setdefault(key, min(snap.ts, now))

        cutoff = now - self.window
        for key, w in self._windows.items():
            if w.last_event >= cutoff:
                fresh_ts[key] = max(fresh_ts.get(key, 0.0), w.last_event)
        flow = self._flow_queues(now)
        for key in flow:  # a model with requests waiting exists even with no pod (scale from zero)
            fresh_ts.setdefault(key, now)

        out: list[Series] = []
        for key, ts in fresh_ts.items():
            labels = {
                "pool": label_value(key.pool),
                "target_model": label_value(key.target_model),
                "model_name": label_value(self.model_name(key)),
            }
            w = self._windows.get(key)
            values = {
                INFLIGHT: float(self._inflight.get(key, 0)),
                WAITING: waiting.get(key, 0.0),
                ARRIVAL_RATE: len(w.arrivals) / self.window if w else 0.0,
                OUTPUT_TOKENS: w.token_sum / self.window if w else 0.0,
                READY_REPLICAS: float(len(pods.get(key, ()))),
                FLOW_QUEUE: flow.get(key, 0.0),
            }
            snaps = serving.get(key)
            if snaps:
                values[KV_CACHE] = sum(s.kv_usage for s in snaps) / len(snaps)
            out.extend(Series(m, key.namespace, labels, v, ts) for m, v in values.items())
        return out

    def _fresh_endpoints(self, now: float) -> Iterable[EndpointSnapshot]:
        limit = now - self.staleness
        for snap in self._endpoints.values():
            if snap.ts >= limit:
                yield snap

    def _attribute(self, snap: EndpointSnapshot) -> dict[ModelKey, float]:
        """How one pod's queue splits between the models it serves (see the module docstring)."""
        at = self._inflight_at.get(snap.address)
        if at:
            mine = {k: n for k, n in at.items() if k.namespace == snap.namespace and k.pool == snap.pool}
            total = sum(mine.values())
            if total:
                return {k: n / total for k, n in mine.items()}
        names = snap.lora.waiting or ([snap.model] if snap.model else snap.lora.running[:1])
        if not names:
            return {}
        return {ModelKey(snap.namespace, snap.pool, n): 1 / len(names) for n in names}


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def label_value(name: str) -> str:
    """A model name as a valid label value, so an HPA selector can name it.

    Every character outside ``[A-Za-z0-9._-]`` becomes ``_`` (``meta-llama/Llama-2-7b-hf`` ->
    ``meta-llama_Llama-2-7b-hf``), the ends are trimmed to alphanumerics and the result is
    cut to 63 characters, the limits of a Kubernetes label value.
    """
    value = _LABEL_UNSAFE.sub("_", name)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def _served(snap: EndpointSnapshot) -> list[str]:
    models = [snap.model] if snap.model else []
    models += [a for a in snap.lora.running if a and a != snap.model]
    return models
