"""Small builders for the scheduler tests (imported by tests/picker/test_sched_*.py)."""

from __future__ import annotations

import random

from picker.scheduling import Decision, EndpointView, Profile, RequestInfo, build_profile
from picker.scheduling.context import Context
from picker.scheduling.inflight import InflightTracker, Load
from picker.scheduling.prefix import PrefixIndex
from picker.scheduling.state import EndpointState, Thresholds
from shared.schemas import EndpointSnapshot, LoraState

NOW = 1000.0
BASE = "llama"


def snap(i: int = 0, *, ts: float = NOW, **kw) -> EndpointSnapshot:
    lora = kw.pop("lora", None)
    fields = dict(
        namespace="ns",
        pool="pool",
        pod=f"pod-{i}",
        address=kw.pop("address", f"10.0.0.{i}:8000"),
        model=BASE,
        kv_capacity_tokens=16_000,
        block_size=16,
        ts=ts,
    )
    fields.update(kw)
    if lora is not None:
        fields["lora"] = LoraState(**lora)
    return EndpointSnapshot(**fields)


def view(i: int = 0, **kw) -> EndpointView:
    s = snap(i, **kw)
    return EndpointView(s.address, s, s.ts or NOW)


def views(*specs: dict) -> list[EndpointView]:
    return [view(i, **spec) for i, spec in enumerate(specs)]


def req(rid: str = "r1", **kw) -> RequestInfo:
    kw.setdefault("model", BASE)
    kw.setdefault("target_model", kw["model"])
    return RequestInfo(request_id=rid, **kw)


class Sched:
    """A built profile driven the director's way, for tests that describe the pool as a list of views.

    ``schedule(request, views, now)`` makes the pool state hold exactly ``views`` (new
    snapshots applied, missing endpoints removed, as the view would on tombstones), then
    advances the clock, admits and schedules. The accounting hooks go to the state;
    other attributes are the scheduler's, else the state's, else admission's.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.state = profile.state
        self.admission = profile.admission
        self.scheduler = profile.scheduler
        self.name = profile.name

    def sync(self, views: list[EndpointView]) -> None:
        state = self.state
        given = set()
        for v in views:
            given.add(v.address)
            cur = state.endpoints.get(v.address)
            if cur is None or cur.snapshot is not v.snapshot or cur.received_at != v.received_at:
                state.on_snapshot(v.snapshot, v.received_at)
        for address in [a for a in state.endpoints if a not in given]:
            state.on_endpoint_removed(address, state.now)

    def schedule(self, request: RequestInfo, views: list[EndpointView], now: float) -> Decision:
        self.sync(views)
        return self.profile.decide(request, now)

    def on_assigned(self, request: RequestInfo, address: str, now: float, *, replica: str = "") -> None:
        self.state.on_assigned(request, address, now, replica=replica)

    def on_completed(self, request_id: str, now: float, *, replica: str = "") -> None:
        self.state.on_completed(request_id, now, replica=replica)

    def __getattr__(self, name: str):
        for part in (self.scheduler, self.state, self.admission):
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(name)


def sched(profile: str = "default", seed: int = 1, config=None) -> Sched:
    return Sched(build_profile(profile, config=config, rng=random.Random(seed)))


def state(i: int = 0, th: Thresholds | None = None, load: Load | None = None, **kw) -> EndpointState:
    s = snap(i, **kw)
    return EndpointState(s.address, s, NOW, load or Load(), th or Thresholds(), 500.0)


def ctx(request: RequestInfo | None = None, *, prefix: PrefixIndex | None = None, seed: int = 0) -> Context:
    return Context(
        request or req(), NOW, random.Random(seed), InflightTracker(), prefix or PrefixIndex(), Thresholds()
    )


def build(profile: str, config=None, rng: random.Random | None = None) -> Sched:
    """``build_profile`` behind the :class:`Sched` harness."""
    return Sched(build_profile(profile, config, rng=rng))
