"""The in-memory bus: NATS subject matching, stream semantics and the delay model."""

from __future__ import annotations

import pytest

from shared.bus import Bus, BusError, MemoryBus, VirtualTime, subject_matches
from shared.natsbus import NatsBus
from shared.subjects import Subjects

S = Subjects("t")


@pytest.mark.parametrize(
    ("pattern", "subject", "match"),
    [
        ("t.ns.p.ep.>", "t.ns.p.ep.pod.8000", True),
        ("t.ns.p.ep.>", "t.ns.p.ep", False),
        ("t.*.*.ev.*", "t.ns.p.ev.r1", True),
        ("t.*.*.ev.*", "t.ns.p.ev.r1.x", False),
        ("t.ns.p.ev.r1", "t.ns.p.ev.r2", False),
    ],
)
def test_subject_matching_follows_nats(pattern, subject, match):
    assert subject_matches(pattern, subject) is match


def test_both_buses_implement_the_interface():
    assert isinstance(MemoryBus(S), Bus)
    assert isinstance(NatsBus(None, S), Bus)


async def test_last_values_bootstrap_then_live_and_replay_by_time():
    clock = [100.0]
    bus = MemoryBus(S, clock=lambda: clock[0])
    ep = [S.endpoint("ns", "p", f"pod-{i}", 8000) for i in range(2)]
    await bus.publish(ep[0], b"a1")
    await bus.publish(ep[1], b"b1")
    await bus.publish(ep[0], b"a2")  # replaces a1 in the stream
    got: list[tuple[str, bytes]] = []
    sub = await bus.follow_last_values(S.endpoints_of_pool("ns", "p"), lambda s, d: got.append((s, d)))
    assert sub.caught_up.is_set() and got == [(ep[1], b"b1"), (ep[0], b"a2")]
    await bus.publish(ep[1], b"b2")
    assert got[-1] == (ep[1], b"b2")
    await sub.unsubscribe()
    await bus.publish(ep[1], b"b3")
    assert got[-1] == (ep[1], b"b2")

    ev = S.events("ns", "p", "r1")
    for i in range(3):
        clock[0] = 200.0 + i
        await bus.publish(ev, b"e%d" % i)
    replayed: list[bytes] = []
    assert await bus.replay(S.events_of_pool("ns", "p"), 201.0, lambda s, d: replayed.append(d)) == 2
    assert replayed == [b"e1", b"e2"]


def test_delays_run_on_the_given_clock_in_publish_order_to_subscribers_of_the_time():
    vt = VirtualTime()
    bus = MemoryBus(
        S, delay=lambda s: 0.005 if ".ev." in s else 0.05, clock=lambda: vt.now, call_later=vt.call_later
    )
    got: list[tuple[float, bytes]] = []
    bus.subscribe_nowait(">", lambda s, d: got.append((vt.now, d)))
    bus.publish_nowait(S.endpoint("ns", "p", "pod", 1), b"snap")
    bus.publish_nowait(S.events("ns", "p", "r"), b"e1")
    bus.publish_nowait(S.events("ns", "p", "r"), b"e2")
    late: list[bytes] = []
    bus.subscribe_nowait(">", lambda s, d: late.append(d))  # no interest at publish time: nothing
    vt.run_until(1.0)
    assert got == [(0.005, b"e1"), (0.005, b"e2"), (0.05, b"snap")]
    assert late == []


async def test_an_outage_refuses_publishes_and_the_reconnection_is_announced():
    bus = MemoryBus(S)
    calls: list[int] = []
    bus.on_reconnect(lambda: calls.append(1))
    bus.set_connected(False)
    with pytest.raises(BusError):
        await bus.publish(S.events("ns", "p", "r"), b"x")
    bus.set_connected(True)
    assert calls == [1] and bus.connected
