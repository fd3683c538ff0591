"""The picker's /metrics shows each endpoint's accelerator and cost, and the pool's totals per accelerator."""

from __future__ import annotations

from picker.metrics import PickerMetrics
from picker.scheduling.api import EndpointView
from shared.schemas import EndpointSnapshot


def _ep(addr: str, accel: str, cost: float, ready: bool = True) -> EndpointView:
    snap = EndpointSnapshot(
        namespace="ns",
        pool="pool",
        pod=addr,
        address=addr,
        accelerator=accel,
        cost_per_hour=cost,
        ready=ready,
    )
    return EndpointView(addr, snap, 0.0)


def test_accelerator_and_cost_series():
    m = PickerMetrics()
    eps = [_ep("a:1", "h100-80gb", 3.0), _ep("b:1", "h100-80gb", 3.0), _ep("c:1", "l40s-48gb", 1.0)]
    eps.append(_ep("d:1", "", 0.0))
    eps.append(_ep("e:1", "l40s-48gb", 1.0, ready=False))
    stats = {"avg_kv": 0.0, "avg_queue": 0.0, "ready": 4, "endpoints": 5, "max_age": 0.0, "stale": 0}
    counters = {"dropped": {}, "decode_failures": 0, "accepted": 0}
    m.add_pool_collector("pool", lambda: stats, lambda: counters, lambda: eps)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in m.registry.collect()
        for s in fam.samples
    }

    def get(name, **labels):
        return samples[(name, tuple(sorted({"name": "pool", **labels}.items())))]

    assert (
        get("infergate_pool_endpoint_accelerator_info", model_server_endpoint="c:1", accelerator="l40s-48gb")
        == 1
    )
    assert (
        get("infergate_pool_endpoint_accelerator_info", model_server_endpoint="d:1", accelerator="unknown")
        == 1
    )
    assert get("infergate_pool_endpoint_cost_per_hour", model_server_endpoint="a:1") == 3.0
    assert get("infergate_pool_ready_endpoints_by_accelerator", accelerator="h100-80gb") == 2
    assert get("infergate_pool_ready_endpoints_by_accelerator", accelerator="l40s-48gb") == 1  # e:1 not ready
    assert get("infergate_pool_cost_per_hour", accelerator="h100-80gb") == 6.0
    assert get("infergate_pool_cost_per_hour", accelerator="l40s-48gb") == 1.0
