"""The DES charges the picker replicas' CPU: a decision queues for its replica's core."""

from __future__ import annotations

import pytest

from bench.des import DESConfig, WorkloadSpec
from bench.des.cluster import run_point
from bench.des.picker_cpu import PickerCores, PickerCpu


def test_a_core_serves_decisions_in_arrival_order():
    cores = PickerCores(PickerCpu(decision_s=0.010), replicas=2)
    assert cores.decide_at(0, 1.0) == pytest.approx(1.010)
    assert cores.decide_at(0, 1.0) == pytest.approx(1.020)  # waits behind the first
    assert cores.decide_at(1, 1.0) == pytest.approx(1.010)  # the other replica is idle
    assert cores.decide_at(0, 2.0) == pytest.approx(2.010)  # idle again by then
    assert cores.waits == pytest.approx([0.010, 0.020, 0.010, 0.010])


def test_streamed_tokens_load_every_replica_and_delay_the_next_decision():
    cores = PickerCores(PickerCpu(decision_s=0.001, per_token_s=0.0001), replicas=2)
    cores.on_tokens(5.0, 200)  # 20 ms of round trips, 10 ms on each replica
    assert cores.decide_at(0, 5.0) == pytest.approx(5.011)
    assert cores.decide_at(1, 5.0) == pytest.approx(5.011)
    assert cores.utilization(1.0) == pytest.approx(0.011)
    free = PickerCores(PickerCpu(decision_s=0.001), replicas=1)
    free.on_tokens(5.0, 200)  # no per-token cost: no load
    assert free.decide_at(0, 5.0) == pytest.approx(5.001)


def _point(picker_cpu: PickerCpu, pickers: int, seed: int = 3):
    return run_point(
        DESConfig(
            policy="default",
            qps=40.0,
            replicas=4,
            duration_s=4.0,
            warmup_s=1.0,
            workload=WorkloadSpec("sharegpt-like"),
            picker_replicas=pickers,
            picker_cpu=picker_cpu,
            seed=seed,
        )
    )


def test_an_overloaded_replica_delays_every_request_and_more_replicas_carry_it():
    free = _point(PickerCpu(), 1)
    assert free.picker_cpu == "free" and free.picker_util == 0.0 and free.picker_wait_p90 == 0.0
    # 40 req/s at 30 ms each: 1.2 cores of decisions for one replica, 0.3 each for four.
    slow = PickerCpu(decision_s=0.030, name="slow")
    one = _point(slow, 1)
    four = _point(slow, 4)
    assert one.picker_util > 1.0 > four.picker_util
    assert one.picker_wait_p90 > 10 * four.picker_wait_p90
    # the wait is part of every request's latency, measured from its arrival at the picker
    assert one.ttft_p50 > free.ttft_p50 + 0.1
    assert four.ttft_p50 >= free.ttft_p50 + slow.decision_s * 0.99
    assert one.arrived == four.arrived == free.arrived
    assert one.served + one.unfinished + one.shed == one.arrived


def test_free_picker_cpu_leaves_the_point_unchanged():
    a = _point(PickerCpu(), 2, seed=5)
    b = _point(PickerCpu(0.0, 0.0, "free"), 2, seed=5)
    assert (a.ttft_p90, a.e2e_p90, a.output_tokens, a.served) == (
        b.ttft_p90,
        b.e2e_p90,
        b.output_tokens,
        b.served,
    )
