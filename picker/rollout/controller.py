"""The rollout controller of one picker replica: shared state in, weights out.

Every ``tick_s`` for each rule under rollout (:mod:`picker.rollout.spec`) it reads the
shared record from the JetStream KV bucket (creating it at the first step for a new
rollout, or when the rule's stable/canary pair changed), lets :func:`~picker.rollout.state.decide`
judge the canary against the stable model on the completions every replica reported since
the step started, writes a change by compare-and-set, and sets the weights of that rule in
the replica's :class:`~picker.models.ModelTable`. Every replica runs it; the record makes
them agree, and a replica that restarts picks the rollout up where the record says.

One log line per transition (``rollout started``/``advanced``/``complete``/``rolled back``,
with both models' figures); metrics ``infergate_rollout_*`` (labels from the configuration).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from picker.rollout import state as rs
from picker.rollout.spec import Rollout, rollouts_of
from picker.rollout.stats import CompletionStats
from shared.kvstore import Conflict, KvStore, kv_token
from shared.schemas import Completion, EventBatch, event_decoder

log = logging.getLogger(__name__)

PHASES = (rs.PROGRESSING, rs.COMPLETE, rs.ROLLED_BACK)


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["model", "stable", "canary"]
        self.weight = Gauge(
            "infergate_rollout_canary_weight_percent",
            "Share of the model's requests sent to the canary target, percent.",
            labels,
            registry=registry,
        )
        self.step = Gauge(
            "infergate_rollout_step", "Index of the rollout's current step.", labels, registry=registry
        )
        self.phase = Gauge(
            "infergate_rollout_phase",
            "1 for the rollout's phase (progressing, complete, rolled_back).",
            [*labels, "phase"],
            registry=registry,
        )
        self.transitions = Counter(
            "infergate_rollout_transitions_total",
            "Rollout transitions this replica wrote (advance, complete, rollback, start).",
            ["model", "kind"],
            registry=registry,
        )
        self._series: set[tuple[str, str, str]] = set()

    def show(self, r: Rollout, st: rs.RolloutState) -> None:
        key = (r.model, r.stable, r.canary)
        self._series.add(key)
        self.weight.labels(*key).set(st.weight)
        self.step.labels(*key).set(st.step)
        for p in PHASES:
            self.phase.labels(*key, p).set(1.0 if st.phase == p else 0.0)

    def keep_only(self, keys: set[tuple[str, str, str]]) -> None:
        for key in self._series - keys:
            for g in (self.weight, self.step):
                try:
                    g.remove(*key)
                except KeyError:
                    pass
            for p in PHASES:
                try:
                    self.phase.remove(*key, p)
                except KeyError:
                    pass
        self._series &= keys


def record_key(namespace: str, pool: str, r: Rollout) -> str:
    return ".".join(
        [kv_token(namespace), kv_token(pool), kv_token(r.rewrite), str(r.rule), kv_token(r.model)]
    )


class RolloutController:
    def __init__(
        self,
        namespace: str,
        pool: str,
        me: str,
        registry: CollectorRegistry,
        *,
        tick_s: float = 0.5,
        clock=time.time,
    ) -> None:
        self.namespace = namespace
        self.pool = pool
        self.me = me
        self.tick_s = tick_s
        self.clock = clock
        self.kv: KvStore | None = None
        self.table: Any = None
        self.rollouts: list[Rollout] = []
        self.states: dict[str, rs.RolloutState] = {}  # rollout id -> last state read or written
        self.stats = CompletionStats()
        self.metrics = RolloutMetrics(registry)
        self._decoder = event_decoder()
        self.ticks = 0

    # -- inputs ---------------------------------------------------------------------------
    def apply(self, table: Any) -> None:
        """A new model table (configuration change): find its rollouts, set their weights."""
        self.table = table
        self.rollouts = rollouts_of(getattr(table, "rewrites", []), getattr(table, "rule_of", {}))
        self.stats.track({m for r in self.rollouts for m in (r.stable, r.canary)})
        self.metrics.keep_only({(r.model, r.stable, r.canary) for r in self.rollouts})
        for r in self.rollouts:
            st = self.states.get(r.id)
            if st is not None and (st.stable, st.canary) != (r.stable, r.canary):
                st = None
            self._set_weight(r, st.weight if st is not None else 0)

    def on_events(self, subject: str, payload: bytes) -> None:
        """Handler of the pool's event subjects: every replica's completions."""
        if not self.rollouts:
            return
        msg = self._decoder.decode(payload)
        events = msg.events if isinstance(msg, EventBatch) else [msg] if isinstance(msg, Completion) else []
        for ev in events:
            if isinstance(ev, Completion) and ev.target_model:
                self.stats.add(ev.target_model, ev.status, ev.latency_s, ev.ttft_s, ev.output_tokens, ev.ts)

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: keep the weights in force, try again
                log.warning("rollout tick failed", extra={"error": repr(exc)})
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        self.ticks += 1
        if self.kv is None:
            return
        for r in list(self.rollouts):
            st = await self._step(r)
            if st is not None:
                self.states[r.id] = st
                self._set_weight(r, st.weight)
                self.metrics.show(r, st)

    async def _step(self, r: Rollout) -> rs.RolloutState | None:
        assert self.kv is not None
        key = record_key(self.namespace, self.pool, r)
        for _ in range(3):
            now = self.clock()
            entry = await self.kv.get(key)
            st = rs.decode(entry.value) if entry is not None else None
            if st is None or (st.stable, st.canary) != (r.stable, r.canary):
                new = rs.initial(r.stable, r.canary, r.settings, now, self.me)
                kind = "start"
            else:
                canary = self.stats.summary(r.canary, st.since)
                stable = self.stats.summary(r.stable, st.since)
                d = rs.decide(st, r.settings, canary, stable, now, self.me)
                if d is None:
                    return st
                new, kind = d.state, d.kind
            try:
                if entry is None:
                    await self.kv.create(key, rs.encode(new))
                else:
                    await self.kv.update(key, rs.encode(new), entry.revision)
            except Conflict:
                continue  # another replica moved it first: read its decision
            self.metrics.transitions.labels(r.model, kind).inc()
            self._log(r, kind, st, new)
            return new
        return None

    def _log(self, r: Rollout, kind: str, old: rs.RolloutState | None, new: rs.RolloutState) -> None:
        since = old.since if old is not None else new.since
        extra = {
            "model": r.model,
            "rewrite": f"{r.namespace}/{r.rewrite}",
            "stable": r.stable,
            "canary": r.canary,
            "from_percent": old.weight if old is not None else None,
            "to_percent": new.weight,
            "step": new.step,
            "phase": new.phase,
            "reason": new.reason,
            "canary_stats": self.stats.summary(r.canary, since).describe(),
            "stable_stats": self.stats.summary(r.stable, since).describe(),
        }
        message = {
            "start": "rollout started",
            "advance": "rollout advanced",
            "complete": "rollout complete",
            "rollback": "rollout rolled back",
        }[kind]
        (log.warning if kind == "rollback" else log.info)(message, extra=extra)

    def _set_weight(self, r: Rollout, weight: int) -> None:
        if self.table is not None:
            self.table.set_weights(r.model, [(r.stable, 100 - weight), (r.canary, weight)])
