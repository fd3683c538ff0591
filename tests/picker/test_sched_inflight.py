"""The in-flight tracker: counted once, reconciled by snapshots, released, expired."""

from __future__ import annotations

from picker.scheduling.inflight import InflightTracker


def test_assignment_counts_until_a_snapshot_covers_it():
    t = InflightTracker(ttl=60, propagation=0.02)
    t.snapshot("a", 10.0)
    t.assign("r1", "a", 300, now=10.1)
    t.assign("r2", "a", 200, now=10.2)
    assert t.extra("a") == (2, 500)
    t.snapshot("a", 10.15)  # scraped after r1 reached the pod, before r2 was sent
    assert t.extra("a") == (1, 200)
    t.snapshot("a", 10.3)
    assert t.extra("a") == (0, 0)


def test_propagation_allowance_keeps_a_just_sent_request_extra():
    t = InflightTracker(propagation=0.02)
    t.assign("r1", "a", 100, now=5.0)
    t.snapshot("a", 5.01)  # the scrape may have run before the request arrived
    assert t.extra("a") == (1, 100)
    t.snapshot("a", 5.03)
    assert t.extra("a") == (0, 0)


def test_completion_before_snapshot_releases_and_nothing_goes_negative():
    t = InflightTracker(propagation=0.0)
    t.assign("r1", "a", 100, now=1.0)
    t.complete("r1", now=1.05)
    assert t.extra("a") == (0, 0)
    t.snapshot("a", 2.0)  # the dead entry is popped, not subtracted again
    assert t.extra("a") == (0, 0)
    assert len(t) == 0


def test_completion_after_reconciliation_is_not_subtracted_twice():
    t = InflightTracker(propagation=0.0)
    t.assign("r1", "a", 100, now=1.0)
    t.assign("r2", "a", 50, now=1.5)
    t.snapshot("a", 1.2)
    assert t.extra("a") == (1, 50)
    t.complete("r1", now=1.6)  # already inside the pod's counts
    assert t.extra("a") == (1, 50)
    t.complete("r2", now=1.7)
    assert t.extra("a") == (0, 0)


def test_late_peer_event_already_covered_by_a_snapshot_is_not_extra():
    t = InflightTracker(propagation=0.01)
    t.snapshot("a", 3.0)
    t.assign("peer-r", "a", 100, now=2.5)  # assigned at 2.5, heard of after the 3.0 scrape
    assert t.extra("a") == (0, 0)
    assert len(t) == 1  # still tracked, for its completion


def test_out_of_order_events_stay_time_ordered():
    t = InflightTracker(propagation=0.0)
    t.assign("r2", "a", 20, now=2.0)
    t.assign("r1", "a", 10, now=1.0)  # a peer's older event arrives later
    t.snapshot("a", 1.5)
    assert t.extra("a") == (1, 20)


def test_entries_expire_after_ttl_when_completion_is_lost():
    t = InflightTracker(ttl=30, propagation=0.0)
    t.assign("r1", "a", 100, now=0.0)
    t.assign("r2", "b", 100, now=20.0)
    t.expire(29.0)
    assert t.extra("a") == (1, 100)
    t.expire(31.0)
    assert t.extra("a") == (0, 0)
    assert t.extra("b") == (1, 100)
    assert len(t) == 1
    t.complete("r1", now=32.0)  # a very late completion is harmless
    assert t.extra("a") == (0, 0)


def test_reassignment_of_same_request_moves_the_load():
    t = InflightTracker(propagation=0.0)
    t.assign("r1", "a", 100, now=1.0)
    t.assign("r1", "b", 100, now=1.1)  # a retry on a fallback
    assert t.extra("a") == (0, 0)
    assert t.extra("b") == (1, 100)
    assert len(t) == 1


def test_removed_endpoint_drops_its_load():
    t = InflightTracker()
    load = t.load("a")
    t.assign("r1", "a", 100, now=1.0)
    t.remove_endpoint("a")
    assert (load.n, load.tokens) == (0, 0)
    t.complete("r1", now=2.0)
    assert t.extra("a") == (0, 0)


def test_older_snapshot_does_not_undo_reconciliation():
    t = InflightTracker(propagation=0.0)
    t.assign("r1", "a", 100, now=1.0)
    t.snapshot("a", 2.0)
    t.snapshot("a", 0.5)
    t.assign("r2", "a", 100, now=1.5)  # covered by the 2.0 snapshot
    assert t.extra("a") == (0, 0)
