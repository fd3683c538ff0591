"""Flow control in the discrete-event simulation: the real :class:`picker.flow.FlowController`.

:class:`FlowCluster` is the DES's :class:`~bench.des.cluster.Cluster` with requests that
carry a priority and a tenant (fairness id), and, per picker replica, optionally the flow
controller between admission and scheduling. Without flow control a request is decided at
arrival as before (round-robin, ``gie-v1`` shedding priority < 0 when saturated); with it,
the request is submitted to its replica's controller, which dispatches it (late binding,
scheduled with that replica's freshest view) when its detector sees room: on every local
completion, and every ``tick_s`` of virtual time while something waits.

Latencies are measured from the client's arrival (queueing in the picker included).
Results are kept per band and per tenant.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from picker.flow.config import FlowConfig
from picker.flow.controller import FlowController
from picker.flow.pool import Shares
from picker.models import criticality_of
from picker.scheduling import RequestInfo
from sim.engine import SimRequest
from sim.workloads import percentile

from .cluster import MODEL, Cluster, DESConfig
from .oracle import PREFILL_WEIGHT

__all__ = ["FlowPoint", "FlowPointResult", "run_flow_point"]


@dataclass
class FlowPoint:
    """One point: the DES config, the request mix, and flow control (None: decide at arrival)."""

    des: DESConfig
    bands: tuple[tuple[int, float], ...] = ((0, 1.0),)  # (priority, share of requests)
    tenants: tuple[tuple[str, float], ...] = (("t", 1.0),)  # (fairness id, share of requests)
    flow: FlowConfig | None = None
    label: str = ""  # the row's name in the report (policy + variant)
    load: float = 1.0  # offered load as a multiple of the pool's capacity (report only)


@dataclass
class FlowPointResult:
    label: str
    load: float
    qps: float
    replicas: int
    per_band: dict[int, dict[str, float]] = field(default_factory=dict)
    per_tenant: dict[str, dict[str, float]] = field(default_factory=dict)
    total_tok_s: float = 0.0  # output tokens of the measured requests / (last finish - warm-up)
    window_tok_s: float = 0.0  # output tokens finished inside the measured window / its length
    rejected: int = 0
    served: int = 0
    unfinished: int = 0
    jain: float = math.nan
    cpu_s: float = 0.0


class _Waiter:
    __slots__ = ("cluster", "item", "measured", "p", "t_arrive", "tenant")

    def __init__(
        self, cluster: FlowCluster, p: int, item: Any, measured: bool, t: float, tenant: str
    ) -> None:
        self.cluster, self.p, self.item, self.measured, self.t_arrive, self.tenant = (
            cluster, p, item, measured, t, tenant,
        )  # fmt: skip

    def dispatch(self, decision: Any, info: RequestInfo) -> None:
        self.cluster._place(self, info, decision.endpoints[0])

    def reject(self, status: int, reason: str, dropped: str) -> None:
        self.cluster._rejected(self, self.cluster._info_priority.pop(id(self), 0))


class FlowCluster(Cluster):
    def __init__(self, point: FlowPoint) -> None:
        self.point = point
        super().__init__(point.des)
        self._rng_mix = random.Random(point.des.seed * 7919 + 17)
        self.controllers: list[FlowController | None] = []
        for pk in self.pickers:
            fc = None
            if point.flow is not None:
                prof = pk.profile
                fc = FlowController(point.flow, prof.scheduler, prof.state, clock=lambda: 0.0)
            self.controllers.append(fc)
        self.band_recs: dict[int, list[tuple[float, float, int]]] = {b: [] for b, _ in point.bands}
        self.band_rej: dict[int, int] = {b: 0 for b, _ in point.bands}
        self.tenant_recs: dict[str, list[tuple[float, float, int]]] = {t: [] for t, _ in point.tenants}
        self._info_priority: dict[int, int] = {}
        self._ticking = [False] * len(self.pickers)
        # Pool-wide band order: each replica publishes its highest waiting priority every
        # publish interval (picker.flow.pool); peers hold lower bands back while it waits.
        self.shares: list[Shares] = []
        if point.flow is not None and self.shared and point.flow.pool_wide:
            for p, (pk, fc) in enumerate(zip(self.pickers, self.controllers, strict=True)):
                sh = Shares(pk.name, point.flow.publish_interval_s, clock=lambda: self.now)
                sh.connected = True
                self.shares.append(sh)
                assert fc is not None
                fc.peer_top = sh.peer_top
                fc.replicas = sh.replicas
                if point.flow.publish_on_rise:
                    fc.on_top_rise = lambda p=p: self._send_top(p)
            for p in range(len(self.pickers)):
                self._call_later(
                    point.flow.publish_interval_s * (p + 1) / len(self.pickers), lambda p=p: self._publish(p)
                )

    # -- arrival ---------------------------------------------------------------------------
    @staticmethod
    def _pick(rng: random.Random, mix: tuple[tuple[Any, float], ...]) -> Any:
        x = rng.random() * sum(w for _, w in mix)
        for v, w in mix:
            x -= w
            if x < 0:
                return v
        return mix[-1][0]

    def _arrive(self, now: float, measured: bool) -> None:
        item = self.sampler()
        self.arrived += measured
        prio = self._pick(self._rng_mix, self.point.bands)
        tenant = self._pick(self._rng_mix, self.point.tenants)
        p = self._rr % len(self.pickers)
        self._rr += 1
        pk = self.pickers[p]
        info = RequestInfo(
            request_id=f"r{self._seq}",
            model=MODEL,
            target_model=MODEL,
            criticality=criticality_of(prio),  # type: ignore[arg-type]
            prompt_tokens=item.prompt_tokens,
            prefix_hashes=item.block_hashes,
            expected_output_tokens=item.output_tokens,
            fairness_id=tenant,
            priority=prio,
        )
        w = _Waiter(self, p, item, measured, now, tenant)
        self._info_priority[id(w)] = prio
        if measured:  # open from arrival: a request waiting in a picker keeps the run going
            self.open_measured += 1
        fc = self.controllers[p]
        if fc is None:
            d = pk.profile.decide(info, now)
            if d.ok:
                self._place(w, info, d.endpoints[0])
            else:
                self._rejected(w, prio)
            return
        pk.profile.state.advance(now)
        out = fc.submit(info, item.prompt_tokens * 4, now, w)
        if hasattr(out, "ok"):
            if out.ok:
                self._place(w, info, out.endpoints[0])
            else:
                self._rejected(w, prio)
        else:
            self._tick(p)

    def _rejected(self, w: _Waiter, prio: int) -> None:
        self._info_priority.pop(id(w), None)
        if w.measured:
            self.open_measured -= 1
            self.shed += 1
            self.band_rej[prio] = self.band_rej.get(prio, 0) + 1

    def _place(self, w: _Waiter, info: RequestInfo, address: str) -> None:
        self._info_priority.pop(id(w), None)
        now = self.now
        pk = self.pickers[w.p]
        item = w.item
        pk.profile.state.on_assigned(info, address, now, replica=pk.name)
        if pk.batcher is not None:
            pk.batcher.on_local_assignment(info, address, now)
        self.work[address] += PREFILL_WEIGHT * item.prompt_tokens + item.output_tokens
        req = SimRequest(
            info.request_id, item.prompt_tokens, item.output_tokens, item.block_hashes, item.lora
        )
        req.ctx = (info, w.p, w.measured, w.t_arrive, w.tenant)
        self.engines[address].add(req, now)
        self._kick(address, now)

    def _publish(self, p: int) -> None:
        assert self.point.flow is not None
        self._send_top(p)
        self._call_later(self.point.flow.publish_interval_s, lambda: self._publish(p))

    def _send_top(self, p: int) -> None:
        """One message of replica ``p`` (its highest waiting priority) to every peer, after the bus delay."""
        fc = self.controllers[p]
        assert fc is not None
        top, name = fc.top(), self.pickers[p].name
        for q, sh in enumerate(self.shares):
            if q != p:
                self._call_later(self.cfg.share_delay_s, lambda sh=sh, top=top: self._heard(sh, name, top))

    def _heard(self, sh: Shares, name: str, top: int | None) -> None:
        sh.heard(name, 0, self.now, top)
        for p, fc in enumerate(self.controllers):  # a peer's queue emptied: held bands may go
            if fc is not None and fc.queued:
                self._tick(p)

    # -- dispatch ticks ----------------------------------------------------------------------
    def _tick(self, p: int) -> None:
        if self._ticking[p]:
            return
        self._ticking[p] = True
        fc = self.controllers[p]
        assert fc is not None
        self._call_later(fc.cfg.tick_s, lambda: self._on_tick(p))

    def _on_tick(self, p: int) -> None:
        self._ticking[p] = False
        fc = self.controllers[p]
        if fc is None or not fc.queued:
            return
        fc.pump(self.now)
        if fc.queued:
            self._tick(p)

    # -- completion ------------------------------------------------------------------------
    def _finish(self, address: str, finished: list[SimRequest], now: float) -> None:
        cfg = self.cfg
        t_lo, t_hi = cfg.warmup_s, cfg.warmup_s + cfg.duration_s
        touched = set()
        for r in finished:
            info, p, measured, t_arrive, tenant = r.ctx
            if t_lo <= r.t_finished < t_hi:
                self.window_tokens += r.max_tokens
            if measured:
                rec = (r.t_first_token - t_arrive, r.t_finished - t_arrive, r.max_tokens)
                self.records.append(rec)
                self.band_recs.setdefault(info.priority, []).append(rec)
                self.tenant_recs.setdefault(tenant, []).append(rec)
                self.open_measured -= 1
                self.last_finish = max(self.last_finish, r.t_finished)
            pk = self.pickers[p]
            pk.profile.state.on_completed(info.request_id, now, replica=pk.name)
            if pk.batcher is not None:
                pk.batcher.on_local_completion(
                    info, address, 200, r.prompt_tokens, r.max_tokens, r.t_finished - r.arrival,
                    r.t_first_token - r.arrival, now,
                )  # fmt: skip
            fc = self.controllers[p]
            if fc is not None:
                fc.completed(info.fairness_id, r.max_tokens, now)
                touched.add(p)
        for p in touched:
            fc = self.controllers[p]
            if fc is not None and fc.queued:
                fc.pump(now)

    # -- result ------------------------------------------------------------------------------
    def flow_result(self) -> FlowPointResult:
        base = self.run()
        span = max(1e-9, self.last_finish - self.cfg.warmup_s)
        res = FlowPointResult(
            self.point.label, self.point.load, self.cfg.qps, self.cfg.picker_replicas, cpu_s=base.cpu_s
        )
        res.served = base.served
        res.rejected = self.shed
        res.unfinished = base.unfinished
        res.total_tok_s = base.output_tokens / span
        res.window_tok_s = base.window_tok_per_min / 60.0
        for b, _ in self.point.bands:
            res.per_band[b] = _stats(self.band_recs.get(b, []), span) | {"rejected": self.band_rej.get(b, 0)}
        shares = []
        for t, w in self.point.tenants:
            st = _stats(self.tenant_recs.get(t, []), span)
            res.per_tenant[t] = st
            shares.append(st["tok_s"] / w if w > 0 else 0.0)
        if shares and sum(shares) > 0:
            res.jain = sum(shares) ** 2 / (len(shares) * sum(x * x for x in shares))
        return res


def _stats(recs: list[tuple[float, float, int]], span: float) -> dict[str, float]:
    return {
        "served": len(recs),
        "ttft_p90": percentile([r[0] for r in recs], 90),
        "ntpot_p90": percentile([r[1] / r[2] for r in recs if r[2] > 0], 90),
        "tok_s": sum(r[2] for r in recs) / span,
    }


def run_flow_point(point: FlowPoint) -> FlowPointResult:
    """Simulate one flow-control point (top level: a process pool can run it)."""
    return FlowCluster(point).flow_result()
