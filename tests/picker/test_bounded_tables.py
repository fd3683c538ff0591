"""Issue #19 item 2: every table keyed by outside input holds its bound under a flood, and says so.

One test per table: the picker's in-flight entries and endpoints, its prefix index, the
event ledger (the picker's peer dedup and the autoscaler's), the autoscaler's per-model
tables; and the gauges that export their sizes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from autoscaler import aggregate as A
from autoscaler.metrics import AutoscalerMetrics
from picker.scheduling.inflight import InflightTracker
from picker.scheduling.prefix import PrefixIndex
from picker.sharing import SharingSettings
from picker.sharing.listener import PeerListener
from shared.bus import MemoryBus
from shared.feed import EventLedger
from shared.schemas import Assignment, Completion, EndpointSnapshot
from shared.subjects import Subjects
from tests.picker.test_sharing_applier import Clock, Recorder


def test_inflight_entries_stay_under_the_bound_and_the_load_stays_consistent():
    t = InflightTracker(ttl=60, max_entries=500)
    for i in range(5_000):  # never completed (a client inventing ids, completions lost)
        t.assign(f"id-{i}-" + "x" * 200, "10.0.0.1:8000", 10, now=1.0 + i * 1e-4)
    assert len(t) == 500 and t.evicted == 4_500
    assert t.extra("10.0.0.1:8000") == (500, 500 * 10)  # evicted entries released their load
    for i in range(20_000):  # completed at once: their expiry entries are compacted away
        t.assign(f"c-{i}", "10.0.0.1:8000", 10, now=2.0)
        t.complete(f"c-{i}", now=2.0)
    assert len(t._expiry) <= 2 * t.max_entries + 1
    assert t.extra("10.0.0.1:8000") == (499, 4_990)  # the first new id evicted one more old one


def test_inflight_endpoints_are_bounded():
    t = InflightTracker(max_addresses=10)
    for i in range(100):  # a peer naming endpoints this replica never saw
        t.assign(f"r{i}", f"10.9.{i}.1:8000", 5, now=1.0, replica="peer")
    assert t.addresses == 10 and t.refused == 90 and len(t) == 10


def test_prefix_index_is_bounded_by_capacity_clamp_and_endpoints():
    p = PrefixIndex(default_capacity_blocks=64, max_capacity_blocks=1_000, max_addresses=4)
    p.set_capacity("a", 10**12)  # a pod claiming an absurd KV cache
    assert p.capacity("a") == 1_000
    for i in range(300):  # unique prompts: 300 x 16 unique blocks
        p.add("a", list(range(i * 16, i * 16 + 16)))
    assert p.size("a") == 1_000 and p.hashes == 1_000
    for i in range(10):
        p.add(f"peer-{i}", [1, 2, 3])
    assert p.addresses == 4 and p.refused == 7


def test_event_ledger_is_bounded_and_keeps_deduplicating_what_it_remembers():
    ledger = EventLedger(ttl=3_600, max_entries=1_000)
    for i in range(10_000):
        assert ledger.assign("peer", f"id-{i}", 1.0 + i)
        if i % 2:
            assert ledger.complete("peer", f"id-{i}", 1.0 + i)
    assert len(ledger) == 1_000 and ledger.evicted == 9_000
    assert len(ledger._expiry) <= 4 * ledger.max_entries + 1
    assert ledger.open_requests("peer") <= 1_000
    assert not ledger.assign("peer", "id-9999", 1.0 + 9_999)  # a recent duplicate is still caught


def test_the_listener_exports_its_tables():
    listener = PeerListener(
        MemoryBus(Subjects("t")), "ns", "pool", SharingSettings(replica="b"), Recorder(), clock=Clock()
    )
    for i in range(7):
        listener.applier.apply_event(
            Assignment(
                request_id=f"r{i}",
                replica="a",
                address="10.0.0.1:8000",
                model="m",
                target_model="m",
                ts=Clock().t,
            )
        )
    page = generate_latest(listener.metrics.registry).decode()
    assert 'infergate_sharing_table_entries{table="dedup_requests"} 7.0' in page
    assert 'infergate_sharing_table_limit{table="dedup_requests"} 200000.0' in page
    assert 'infergate_sharing_table_entries{table="peers"} 1.0' in page


def _snap() -> EndpointSnapshot:
    return EndpointSnapshot(
        namespace="ns", pool="p", pod="pod", address="a:1", model="served", ts=1000.0, seq=1, epoch="e"
    )


def test_autoscaler_model_tables_are_bounded_by_served_and_declared_models():
    agg = A.Aggregator(window=30, staleness=10, max_unknown_models=5, clock=lambda: 1000.0)
    registry = CollectorRegistry()
    AutoscalerMetrics(registry, agg)
    agg.on_endpoint(_snap(), 1000.0)
    agg.declare_names({A.ModelKey("ns", "p", "declared"): "declared"})
    names = ["served", "declared"] + [f"junk-{i}-" + "y" * 1_000 for i in range(2_000)]
    for i, name in enumerate(names):
        ev = Assignment(request_id=f"r{i}", replica="x", address="a:1", model=name, target_model=name)
        ev.namespace, ev.pool, ev.ts = "ns", "p", 1000.0
        agg.on_event(ev, 1000.0)
        agg.on_event(
            Completion(
                request_id=f"r{i}",
                replica="x",
                address="a:1",
                model=name,
                namespace="ns",
                pool="p",
                ts=1000.0,
            ),
            1000.0,
        )
    targets = {s.labels["target_model"] for s in agg.series(1000.0)}
    assert (
        targets == {"served", "declared", A.OTHER} | {f"junk-{i}-" + "y" * 1_000 for i in range(5)}
        or len(targets) <= 2 + 5 + 1
    )
    assert len(targets) <= 2 + 5 + 1 and "served" in targets and "declared" in targets and A.OTHER in targets
    page = generate_latest(registry).decode()
    assert 'infergate_autoscaler_table_entries{table="unknown_models"} 6.0' in page  # 5 + other
    assert 'infergate_autoscaler_table_evicted_total{table="unknown_models"} 1995.0' in page
    # Once the window has passed, the junk leaves every per-model table.
    agg.series(1000.0 + 31)
    assert len(agg._names) == 0 and len(agg._unknown) == 0 and not agg._windows
