"""Per-endpoint values precomputed once per snapshot, read by every decision.

A decision over 1,000 endpoints has about a microsecond per endpoint, so everything
that depends only on the snapshot (sanitized numbers, LoRA sets, the static part of the
saturation test, when the metrics turn stale) is computed here, in ``on_snapshot``, and
the hot loops read plain attributes. The in-flight :class:`~.inflight.Load` is shared by
reference, so assignments show up without touching this object. A newer snapshot of the
same endpoint is digested into the same object (:meth:`EndpointState.refresh`): lists
of states kept across snapshots stay current, and the snapshot stream allocates no
state object (one fewer young object per snapshot for the garbage collector).
"""

from __future__ import annotations

import math

from shared.schemas import EndpointSnapshot

from .inflight import Load

__all__ = ["EndpointState", "Thresholds"]

DEFAULT_CAPACITY_TOKENS = 8192 * 16


class Thresholds:
    """Saturation and staleness limits of one profile."""

    __slots__ = ("include_inflight", "kv", "queue", "staleness")

    def __init__(
        self, queue: int = 5, kv: float = 0.8, staleness: float = 0.2, include_inflight: bool = False
    ) -> None:
        self.queue = queue
        self.kv = kv
        self.staleness = staleness
        self.include_inflight = include_inflight


_NO_NAMES: frozenset[str] = frozenset()


def _names(names: list[str]) -> frozenset[str]:
    return frozenset(names) if names else _NO_NAMES


def _num(x: object, lo: float, hi: float, bad: float) -> float:
    """Clamp a reported number into [lo, hi]; NaN or garbage becomes ``bad``."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return bad
    if math.isnan(v):
        return bad
    return min(hi, max(lo, v))


class EndpointState:
    """One endpoint's snapshot, sanitized and digested for the scorers."""

    __slots__ = (
        "accelerator",
        "address",
        "block_size",
        "cap",
        "fresh_until",
        "inv_cap",
        "ip",
        "kv",
        "kv_room",
        "kv_tokens",
        "load",
        "lora_running",
        "lora_slots_free",
        "lora_waiting",
        "max_lora",
        "model",
        "ok",
        "queue_demand",
        "queue_room",
        "queued_tokens",
        "running",
        "sat_static",
        "served",
        "snap",
        "snap_ts",
        "waiting",
    )

    def __init__(
        self,
        address: str,
        snap: EndpointSnapshot,
        received_at: float,
        load: Load,
        th: Thresholds,
        avg_tokens: float,
    ) -> None:
        self.address = address
        self.ip = address.rsplit(":", 1)[0] if ":" in address else address
        self.load = load
        self.refresh(snap, received_at, th, avg_tokens)

    def refresh(self, snap: EndpointSnapshot, received_at: float, th: Thresholds, avg_tokens: float) -> None:
        """Digest a newer snapshot of the same endpoint, in place.

        In place, not a new object: the pool state keeps its gathered candidate lists
        across snapshots (``PoolState._gather``), so a decision does not walk every
        endpoint; the lists hold these objects and see the new values.
        """
        prev = getattr(self, "snap", None)  # the snapshot this one replaces (None: the first)
        self.snap = snap
        self.snap_ts = snap.ts
        self.ok = bool(snap.ready) and bool(snap.healthy)
        self.model = snap.model if isinstance(snap.model, str) else ""
        self.waiting = int(_num(snap.waiting, 0, 1e9, 0))
        self.running = int(_num(snap.running, 0, 1e9, 0))
        self.kv = _num(snap.kv_usage, 0.0, 1.0, 1.0)
        bs = int(_num(snap.block_size, 0, 1 << 20, 16)) or 16
        cap = int(_num(snap.kv_capacity_tokens, 0, 1e12, 0))
        self.block_size = bs
        self.cap = cap if cap >= bs else DEFAULT_CAPACITY_TOKENS
        self.inv_cap = 1.0 / self.cap
        lora = snap.lora
        # Most snapshots repeat the last one's lists: keeping the sets built from them saves
        # allocations per snapshot, i.e. young objects every garbage collection must walk.
        same = prev is not None and prev.lora == lora
        if not same:
            self.lora_running = _names(lora.running)
            self.lora_waiting = _names(lora.waiting)
        self.max_lora = int(_num(lora.max_lora, 0, 1e6, 0))
        self.lora_slots_free = len(self.lora_running) < self.max_lora
        served = snap.served_models
        if prev is None or served != prev.served_models:
            self.served = frozenset(served) if served else None  # None: unknown, assume it serves
        # Metrics are as old as the scrape; if the scrape time is unknown, as the receipt.
        ts = _num(snap.ts, -1e18, 1e18, 0.0) or _num(received_at, -1e18, 1e18, 0.0)
        failing = _num(snap.consecutive_failures, 0, 1e9, 0) > 0 or bool(snap.scrape_error)
        self.fresh_until = float("-inf") if failing else ts + th.staleness
        self.sat_static = self.waiting > th.queue or self.kv > th.kv
        # What in-flight work may add before the pod is saturated (requests, KV tokens);
        # negative when it already is: unsaturated <=> load.n <= queue_room and
        # load.tokens <= kv_room, two comparisons in the hot loops.
        self.queue_room = -1 if self.sat_static else th.queue - self.waiting
        self.kv_room = -1.0 if self.sat_static else (th.kv - self.kv) * self.cap
        # The pod's queue in tokens, each waiting request priced at the average request size,
        # and as a share of its KV capacity (see scorers.ExpectedWorkScorer); the KV use in
        # tokens and the accelerator's name, for the latency model (picker.latency), whose
        # per-endpoint loop has about a microsecond.
        self.queued_tokens = self.waiting * avg_tokens
        self.queue_demand = self.queued_tokens * self.inv_cap
        self.kv_tokens = self.kv * self.cap
        acc = snap.accelerator
        self.accelerator = acc if isinstance(acc, str) else ""

    def saturated(self, th: Thresholds, now: float) -> bool:
        """The saturation test: queue or KV over threshold, or metrics stale/missing."""
        if self.sat_static or now > self.fresh_until:
            return True
        if th.include_inflight:
            load = self.load
            if load.n and (load.n > self.queue_room or load.tokens > self.kv_room):
                return True
        return False
