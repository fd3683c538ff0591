"""The bugs the fuzzers found, each reproduced by its smallest input (they run in a blink)."""

from __future__ import annotations

import math
import time

import pytest

from autoscaler.aggregate import Aggregator
from picker.view import PoolView
from shared.feed import MAX_FUTURE_S, SnapshotOrder
from tests.support.least_load import least_load_profile
from tests.support.snapshots import snapshot

A = "10.0.0.1:8000"


@pytest.mark.parametrize("ts", [math.inf, math.nan, -math.inf, 1e18])
def test_a_snapshot_from_the_far_future_cannot_freeze_an_endpoint(ts):
    """Found by test_fuzz_bus: ``ts=inf`` (or 1e18) from another epoch won every later comparison,
    so the real collector's snapshots were dropped as stale forever."""
    now = time.time()
    view = PoolView("default", "pool", least_load_profile().state)
    assert not view.apply(snapshot(A, epoch="evil", ts=ts), now)
    assert view.dropped["invalid"] == 1
    assert view.apply(snapshot(A, epoch="real", ts=now, waiting=3), now)
    assert view.endpoints[A].snapshot.waiting == 3
    agg = Aggregator()
    agg.on_endpoint(snapshot(A, epoch="evil", ts=ts), now)
    agg.on_endpoint(snapshot(A, epoch="real", ts=now, waiting=3), now)
    assert agg.counters["invalid"] == 1 and agg.counters["snapshots"] == 1


def test_clock_skew_within_the_allowance_is_still_ordered():
    order = SnapshotOrder()
    now = 1000.0
    assert order.admit(snapshot(A, epoch="e1", ts=now + MAX_FUTURE_S - 1), now)
    assert not order.admit(snapshot(A, epoch="e2", ts=now), now)  # older than what was accepted
