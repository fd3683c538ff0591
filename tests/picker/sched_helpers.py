"""Small builders for the scheduler tests (imported by tests/picker/test_sched_*.py)."""

from __future__ import annotations

import random

from picker.scheduling import EndpointView, RequestInfo, build_scheduler
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


def sched(profile: str = "default", seed: int = 1, config=None):
    return build_scheduler(profile, config=config, rng=random.Random(seed))


def state(i: int = 0, th: Thresholds | None = None, load: Load | None = None, **kw) -> EndpointState:
    s = snap(i, **kw)
    return EndpointState(s.address, s, NOW, load or Load(), th or Thresholds(), 500.0)


def ctx(request: RequestInfo | None = None, *, prefix: PrefixIndex | None = None, seed: int = 0) -> Context:
    return Context(
        request or req(), NOW, random.Random(seed), InflightTracker(), prefix or PrefixIndex(), Thresholds()
    )
