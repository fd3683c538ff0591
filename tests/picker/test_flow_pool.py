"""Pool-wide flow control over a bus: demand, shares, shared service, and the autoscaler's queue metric."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler import aggregate as A
from picker.flow.config import FlowConfig
from picker.flow.controller import FlowController
from picker.flow.pool import PoolCoordinator, Shares
from picker.flow.runner import FlowRunner
from picker.scheduling import build_profile
from shared.bus import MemoryBus
from shared.flowmsg import FlowMessage, decode_flow, encode_flow
from shared.subjects import Subjects
from tests.picker.sched_helpers import NOW, req, snap

CFG = FlowConfig(
    enabled=True, detector="concurrency", max_requests_per_pod=4, fairness="least-attained-service"
)


def _replica(bus: MemoryBus, name: str):
    profile = build_profile("gie-v1")
    profile.state.on_snapshot(snap(0), NOW)
    ctl = FlowController(CFG, profile.scheduler, profile.state)
    runner = FlowRunner(ctl)
    shares = Shares(name, interval=0.05)
    coord = PoolCoordinator(bus, bus.subjects, "ns", "pool", name, shares, ctl, runner)
    return ctl, runner, shares, coord


@pytest.mark.asyncio
async def test_replicas_exchange_demand_service_and_queue_lengths():
    bus = MemoryBus(Subjects())
    a_ctl, a_run, a_sh, a = _replica(bus, "a")
    b_ctl, _, b_sh, b = _replica(bus, "b")
    seen: list[tuple] = []
    agg = A.Aggregator(staleness=10)

    def autoscaler(subject: str, data: bytes) -> None:
        where = bus.subjects.parse_flow(subject)
        msg = decode_flow(data)
        seen.append(where)
        agg.on_flow(*where, msg.queued, now=NOW)

    await bus.subscribe(bus.subjects.all_flows(), autoscaler)
    ta = asyncio.create_task(a.run())
    tb = asyncio.create_task(b.run())
    await asyncio.sleep(0)
    a_run.own["10.0.0.0:8000"] = (3, 30)  # a has work in flight; b has none
    a_ctl.service.dispatched("tenant", 500, NOW)
    a_ctl.by_model["llama"] = 2
    b_ctl.by_model["llama"] = 1
    for _ in range(20):
        await asyncio.sleep(0.02)
        if b.received and a.received and b_ctl.service.value("tenant", NOW) > 0:
            break
    ta.cancel()
    tb.cancel()
    await asyncio.gather(ta, tb, return_exceptions=True)
    assert b_sh.peers["a"][0] == 3 and a_sh.peers["b"][0] == 0
    # b charges the tenant for the service a gave it: fairness is accounted pool-wide
    assert b_ctl.service.value("tenant", NOW) == pytest.approx(500, rel=0.01)
    assert ("ns", "pool", "a") in seen
    values = {s.metric: s.value for s in agg.series(NOW) if s.labels["target_model"] == "llama"}
    assert values[A.FLOW_QUEUE] == 3  # both replicas' queues, with no pod serving the model


def test_flow_message_round_trip_and_bad_payload():
    msg = FlowMessage("r", 1.0, 5, {"t": 2.0}, {"m": 1})
    assert decode_flow(encode_flow(msg)) == msg
    with pytest.raises(Exception):  # noqa: B017  (msgspec's DecodeError or a ValueError)
        decode_flow(b"\x00garbage")


def test_queue_lengths_per_model_are_counted_and_bounded():
    profile = build_profile("gie-v1")
    ctl = FlowController(CFG, profile.scheduler, profile.state)  # no pod: everything waits (scale from zero)

    class W:
        def dispatch(self, d, i):  # pragma: no cover - nothing dispatches here
            raise AssertionError

        def reject(self, *a):
            pass

    items = [ctl.submit(req(f"r{i}", model="m", priority=0), 10, NOW, W()) for i in range(3)]
    assert ctl.by_model == {"m": 3}
    ctl.cancel(items[0], NOW)
    ctl.pump(NOW + 1000)  # all expire
    assert ctl.by_model == {}
    for i in range(300):
        ctl.submit(req(f"x{i}", model=f"model-{i}"), 10, NOW, W())
    assert len(ctl.by_model) <= 257


@pytest.mark.asyncio
async def test_a_rise_of_the_top_waiting_priority_is_published_before_the_tick():
    """The peers learn of a new top band at once, not on the next interval (here an hour away)."""
    bus = MemoryBus(Subjects())
    profile = build_profile("gie-v1")  # no pod: every request waits (scale from zero)
    ctl = FlowController(CFG, profile.scheduler, profile.state)
    runner = FlowRunner(ctl)
    coord = PoolCoordinator(bus, bus.subjects, "ns", "pool", "a", Shares("a", interval=3600), ctl, runner)
    ctl.on_top_rise = coord.top_rose
    tops: list[int | None] = []
    await bus.subscribe(bus.subjects.flow_of_pool("ns", "pool"), lambda s, d: tops.append(decode_flow(d).top))
    task = asyncio.create_task(coord.run())

    class W:
        def dispatch(self, d, i):
            pass

        def reject(self, *a):
            pass

    try:
        for _ in range(100):
            if tops:
                break
            await asyncio.sleep(0.01)
        assert tops == [None]  # the first tick: nothing waits
        ctl.submit(req("low", priority=0), 10, NOW, W())
        ctl.submit(req("top", priority=100), 10, NOW, W())
        for _ in range(200):
            if 100 in tops:
                break
            await asyncio.sleep(0.01)
        assert tops[0] is None and tops[-1] == 100 and tops.count(None) == 1, tops
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
