"""Flow controller unit tests: bands, fairness, ordering, bounds, gates, late binding (no I/O)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from picker.flow.config import FlowConfig, parse_flow_config
from picker.flow.controller import NO_ENDPOINTS, TTL_EXPIRED, FlowController
from picker.flow.detectors import ConcurrencyGate, UtilizationGate
from picker.flow.fairness import AttainedService
from picker.flow.pool import Shares, split
from picker.flow.queues import OVERFLOW_FLOW, Band, Item
from picker.scheduling import build_profile
from picker.scheduling.params import ConfigError
from tests.picker.sched_helpers import NOW, req, snap


class W:
    """A waiter that records its outcome; dispatch accounts the assignment like the director."""

    def __init__(self, state, log: list, name: str) -> None:
        self.state, self.log, self.name = state, log, name
        self.outcome: tuple | None = None

    def dispatch(self, decision, info) -> None:
        self.outcome = ("ok", decision.endpoints[0])
        self.state.on_assigned(info, decision.endpoints[0], self.state.now)
        self.log.append(self.name)

    def reject(self, status, reason, dropped) -> None:
        self.outcome = (status, dropped)


def make(cfg: FlowConfig, pods: int = 1, **snapkw):
    profile = build_profile("gie-v1")
    st = profile.state
    for i in range(pods):
        st.on_snapshot(snap(i, **snapkw), NOW)
    st.advance(NOW)
    fc = FlowController(cfg, profile.scheduler, st)
    return fc, st


def submit(fc, st, log, name, *, priority=0, flow="f", now=NOW, slo=None, size=100, tokens=10):
    info = req(name, priority=priority, fairness_id=flow, prompt_tokens=tokens)
    w = W(st, log, name)
    out = fc.submit(info, size, now, w, slo)
    if not isinstance(out, Item):
        if out.ok:
            w.dispatch(out, info)
        else:
            w.outcome = (out.status, "direct")
    return w, out, info


def complete_all(st, infos, now=NOW):
    for info in infos:
        st.on_completed(info.request_id, now)


CONC1 = FlowConfig(enabled=True, detector="concurrency", max_requests_per_pod=1)


def test_fast_path_dispatches_at_once_when_not_saturated():
    fc, st = make(CONC1)
    log: list = []
    w, out, _ = submit(fc, st, log, "a")
    assert out.ok and w.outcome == ("ok", "10.0.0.0:8000") and fc.queued == 0


def test_top_band_goes_before_a_lower_backlog():
    fc, st = make(CONC1)
    log: list = []
    _, _, first = submit(fc, st, log, "busy")
    infos = [first]
    for i in range(3):
        submit(fc, st, log, f"low{i}", priority=-1)
    submit(fc, st, log, "top", priority=100)
    assert fc.queued == 4
    for _ in range(4):
        complete_all(st, infos)
        infos = []
        before = len(log)
        fc.pump(NOW + 0.1)
        assert len(log) == before + 1
        st.on_completed(log[-1], NOW)
    assert log == ["busy", "top", "low0", "low1", "low2"]


def test_round_robin_alternates_flows():
    fc, st = make(CONC1)
    log: list = []
    submit(fc, st, log, "busy")
    for i in range(3):
        submit(fc, st, log, f"a{i}", flow="A")
    submit(fc, st, log, "b0", flow="B")
    submit(fc, st, log, "b1", flow="B")
    for _ in range(5):
        st.on_completed(log[-1], NOW)
        fc.pump(NOW)
    assert log[1:] == ["a0", "b0", "a1", "b1", "a2"]


def test_least_attained_service_serves_the_light_flow_first():
    cfg = FlowConfig(
        enabled=True, detector="concurrency", max_requests_per_pod=1, fairness="least-attained-service"
    )
    fc, st = make(cfg)
    fc.service.completed("heavy", 1000, NOW)  # output x2
    assert fc.service.value("heavy", NOW) == pytest.approx(2000)
    log: list = []
    submit(fc, st, log, "busy", flow="x")
    submit(fc, st, log, "h0", flow="heavy")
    submit(fc, st, log, "l0", flow="light")
    st.on_completed("busy", NOW)
    fc.pump(NOW)
    assert log[-1] == "l0"


def test_attained_service_decays_with_half_life():
    s = AttainedService(half_life_s=10.0)
    s.add("f", 100.0, 0.0)
    assert s.value("f", 10.0) == pytest.approx(50.0)
    assert s.value("f", 20.0) == pytest.approx(25.0)


def test_edf_orders_by_slo_deadline_and_puts_no_slo_last():
    cfg = FlowConfig(enabled=True, detector="concurrency", max_requests_per_pod=1, ordering="edf")
    fc, st = make(cfg)
    log: list = []
    submit(fc, st, log, "busy")
    submit(fc, st, log, "none")
    submit(fc, st, log, "slow", slo=5.0)
    submit(fc, st, log, "fast", slo=0.5)
    for _ in range(3):
        st.on_completed(log[-1], NOW)
        fc.pump(NOW)
    assert log[1:] == ["fast", "slow", "none"]


def test_ttl_expiry_rejects_with_reason_and_band_capacity_429():
    cfg = FlowConfig(
        enabled=True, detector="concurrency", max_requests_per_pod=1, ttl_s=1.0, max_requests_per_band=2
    )
    fc, st = make(cfg)
    log: list = []
    submit(fc, st, log, "busy")
    w1, _, _ = submit(fc, st, log, "q1")
    submit(fc, st, log, "q2")
    w3, out, _ = submit(fc, st, log, "q3")
    assert not isinstance(out, Item) and out.status == 429 and w3.outcome == (429, "direct")
    fc.pump(NOW + 2.0)
    assert w1.outcome == (429, TTL_EXPIRED) and fc.queued == 0 and len(fc.bands[0]) == 0


def test_cancel_removes_at_once():
    fc, st = make(CONC1)
    log: list = []
    submit(fc, st, log, "busy")
    w, item, _ = submit(fc, st, log, "gone")
    assert fc.cancel(item, NOW) and fc.queued == 0 and fc.bands[0].size == 0
    assert not fc.cancel(item, NOW)
    st.on_completed("busy", NOW)
    fc.pump(NOW)
    assert w.outcome is None and log == ["busy"]


def test_no_endpoints_503_without_scale_from_zero_and_waits_with_it():
    fc, st = make(FlowConfig(enabled=True, scale_from_zero_ttl_s=0.0), pods=0)
    log: list = []
    w, out, _ = submit(fc, st, log, "a")
    assert out.status == 503
    fc, st = make(FlowConfig(enabled=True, scale_from_zero_ttl_s=5.0), pods=0)
    w, out, _ = submit(fc, st, log, "b")
    assert isinstance(out, Item)
    fc.pump(NOW + 1)
    assert w.outcome is None
    st.on_snapshot(snap(0, ts=NOW + 1), NOW + 1)
    fc.pump(NOW + 1.05)
    assert w.outcome == ("ok", "10.0.0.0:8000")
    _, out, _ = submit(fc, st, log, "c")  # the pod is there, with room: no wait
    assert not isinstance(out, Item) and out.ok
    fc2, st2 = make(FlowConfig(enabled=True, scale_from_zero_ttl_s=1.0), pods=1, ready=False)
    _, out, _ = submit(fc2, st2, log, "not-ready")  # a pod that is not ready counts as none
    assert isinstance(out, Item)
    fc2.cancel(out, NOW)
    w3, _, _ = submit(fc2, st2, log, "d")
    fc2.pump(NOW + 2)
    assert w3.outcome == (503, NO_ENDPOINTS)


def test_utilization_gate_late_binds_to_the_pod_with_room():
    fc, st = make(FlowConfig(enabled=True))
    st.on_snapshot(snap(0, waiting=9), NOW)  # saturated by queue depth
    st.on_snapshot(snap(1, waiting=0), NOW)
    st.on_snapshot(snap(2, waiting=0, kv_usage=0.95), NOW)  # saturated by KV
    st.advance(NOW)
    log: list = []
    w, _, _ = submit(fc, st, log, "a")
    assert w.outcome == ("ok", "10.0.0.1:8000")
    gate = UtilizationGate()
    assert [s.address for s in gate.available(list(st._states.values()), st)] == ["10.0.0.1:8000"]
    st.advance(NOW + 0.5)  # metrics older than 200 ms: stale counts as saturated
    assert gate.available(list(st._states.values()), st) == []


def test_concurrency_gate_counts_peers_and_tokens():
    fc, st = make(CONC1)
    st.on_assigned(req("peer", prompt_tokens=10), "10.0.0.0:8000", NOW, replica="other")
    log: list = []
    _, out, _ = submit(fc, st, log, "a")
    assert isinstance(out, Item)  # the peer's request fills the pod
    gate = ConcurrencyGate(max_tokens=500)
    st.on_completed("peer", NOW, replica="other")
    assert gate.available(list(st._states.values()), st)
    st.on_assigned(req("big", prompt_tokens=400), "10.0.0.0:8000", NOW, replica="other")
    assert not gate.available(list(st._states.values()), st)


def test_band_flow_limit_folds_into_overflow():
    b = Band(0, max_flows=2)
    for i in range(4):
        b.push(Item(None, 0, f"t{i}", 1, NOW, NOW + 60))
    assert set(b.flows) == {"t0", "t1", OVERFLOW_FLOW} and b.size == 4


def test_config_parsing_and_errors():
    cfg = parse_flow_config(
        {
            "fairness": "least-attained-service",
            "ordering": "edf",
            "detector": {"type": "concurrency", "max_requests_per_pod": 3},
        },
        "p",
    )
    assert cfg.enabled and cfg.max_requests_per_pod == 3 and cfg.ordering == "edf"
    with pytest.raises(ConfigError, match=r"p\.fairness"):
        parse_flow_config({"fairness": "lottery"}, "p")
    with pytest.raises(ConfigError, match=r"p\.detector"):
        parse_flow_config({"detector": {"type": "concurrency"}}, "p")
    with pytest.raises(ConfigError, match=r"p\.bogus"):
        parse_flow_config({"bogus": 1}, "p")
    assert not parse_flow_config(None, "p").enabled


def test_split_sums_to_limit_and_rotates():
    assert split(4, [("a", 1), ("b", 1)]) == {"a": 2, "b": 2}
    assert sum(split(7, [("a", 3), ("b", 1), ("c", 0)]).values()) == 7
    got = {split(1, [("a", 1), ("b", 1)], rot)["a"] for rot in range(2)}
    assert got == {0, 1}


def test_shares_grow_late_shrink_at_once_and_fall_back_when_disconnected():
    t = [0.0]
    s = Shares("a", interval=0.1, clock=lambda: t[0])
    assert s.requests("p", 4) == 4  # alone
    s.connected = True
    s.demand = 1
    s.heard("b", 3, 0.0)
    assert s.requests("p", 4) == 1  # shrinks at once
    s.heard("b", 0, 0.0)
    s.demand = 3
    assert s.requests("p", 4) == 1  # grows only after two intervals
    t[0] = 0.25
    s.heard("b", 0, 0.25)
    assert s.requests("p", 4) == 4
    s.connected = False  # NATS down: half of the limit (2 replicas last known), never all of it
    assert s.requests("p", 4) == 2


def test_profile_block_and_flags_turn_flow_control_on():
    from types import SimpleNamespace

    from picker.flow.service import flow_settings
    from picker.scheduling import build_profile as build

    data = {
        "version": 2,
        "plugins": [{"name": "rr", "type": "round-robin"}],
        "schedulingProfiles": [
            {"name": "fc", "plugins": [{"pluginRef": "rr"}], "flow_control": {"ttl_s": 5, "ordering": "edf"}},
            {"name": "plain", "plugins": [{"pluginRef": "rr"}]},
        ],
    }
    names = ("ttl", "scale_from_zero_ttl", "fairness", "detector", "max_requests_per_pod")
    flags = SimpleNamespace(flow_control="profile", **{f"flow_control_{n}": None for n in names})
    fc = flow_settings(flags, build("fc", data))
    assert fc is not None and fc.ttl_s == 5 and fc.ordering == "edf"
    assert flow_settings(flags, build("plain", data)) is None
    flags.flow_control, flags.flow_control_ttl = "on", 7.0
    assert flow_settings(flags, build("plain", data)).ttl_s == 7.0
    flags.flow_control = "off"
    assert flow_settings(flags, build("fc", data)) is None
    flags.flow_control, flags.flow_control_detector = "on", "concurrency"
    with pytest.raises(ConfigError):
        flow_settings(flags, build("plain", data))  # concurrency needs a limit


def test_lower_bands_wait_while_a_peer_waits_with_a_higher_one():
    fc, st = make(CONC1)
    peer = [100]
    fc.peer_top = lambda: peer[0]
    log: list = []
    _, out, _ = submit(fc, st, log, "low", priority=0)
    assert isinstance(out, Item) and fc.top() == 0  # held: the pod has room, the peer's top band comes first
    _, out, _ = submit(fc, st, log, "top", priority=100)
    assert not isinstance(out, Item) and out.ok  # the same band as the peer's: no hold
    st.on_completed("top", NOW)
    fc.pump(NOW)
    assert log == ["top"]
    peer[0] = None  # the peer's queue emptied
    fc.pump(NOW)
    assert log == ["top", "low"] and fc.top() is None


def test_band_aware_gate_uses_the_mixed_depth_while_several_bands_are_active():
    """Two bands active: a pod is full past mixed_queue_depth, for every band; one band: queue_depth."""
    cfg = FlowConfig(enabled=True, queue_depth=5, mixed_queue_depth=1)
    fc, st = make(cfg, waiting=2)
    log: list = []
    _, out, _ = submit(fc, st, log, "solo", priority=0)
    assert not isinstance(out, Item) and out.ok  # one band: depth 5
    _, out, _ = submit(fc, st, log, "top", priority=100)
    assert isinstance(out, Item)  # two bands: 2 waiting > depth 1
    submit(fc, st, log, "low", priority=0)
    fc.pump(NOW + 0.05)
    assert log == ["solo"]
    st.on_snapshot(snap(0, waiting=1, ts=NOW + 0.1), NOW + 0.1)  # one waiting: room at depth 1
    fc.pump(NOW + 0.1)
    assert log == ["solo", "top"]  # the top band first; then the pod is full again
    st.on_snapshot(snap(0, waiting=2, ts=NOW + 20), NOW + 20)
    fc.pump(NOW + 20)  # the top band went quiet (ACTIVE_WINDOW_S): one band, depth 5 again
    assert log == ["solo", "top", "low"]
    upstream = FlowConfig(enabled=True, queue_depth=5, mixed_queue_depth=5)
    fc, st = make(upstream, waiting=2)
    submit(fc, st, log, "top2", priority=100)
    _, out, _ = submit(fc, st, log, "low2", priority=0)
    assert not isinstance(out, Item) and out.ok  # mixed depth = queue depth: upstream's gate
    fc, st = make(cfg, waiting=2)
    submit(fc, st, log, "a", flow="A")
    _, out, _ = submit(fc, st, log, "b", flow="B")
    assert isinstance(out, Item)  # one band, two flows: mixed too


def test_a_rise_of_the_top_waiting_priority_is_signalled_once():
    fc, st = make(CONC1)
    rises: list[int | None] = []
    fc.on_top_rise = lambda: rises.append(fc.top())
    log: list = []
    submit(fc, st, log, "busy")
    submit(fc, st, log, "low", priority=-1)
    submit(fc, st, log, "low2", priority=-1)  # same top: no signal
    submit(fc, st, log, "top", priority=100)
    submit(fc, st, log, "mid", priority=0)  # below the top: no signal
    assert rises == [-1, 100]


def test_a_held_replica_claims_no_share_for_its_queue():
    """With a limit of 1 per pod, a replica holding low requests for a peer's top band must not
    take the pods' slots from it (demand-proportional shares would give it every one)."""
    fc, st = make(CONC1)
    peer: list[int | None] = [None]
    fc.peer_top = lambda: peer[0]
    log: list = []
    submit(fc, st, log, "busy")
    for i in range(3):
        submit(fc, st, log, f"low{i}", priority=0)
    assert fc.queued_demand() == 3
    peer[0] = 100
    assert fc.queued_demand() == 0
    mine = Shares("b", clock=lambda: NOW)
    mine.connected = True
    mine.demand = fc.queued_demand()
    mine.heard("a", 1, NOW, 100)
    assert mine.requests("10.0.0.0:8000", 1) == 0  # the slot is the peer's (with 3 claimed, it was ours)


def test_round_robin_per_replica_is_pool_fair_when_flows_spread_over_replicas():
    """Round-robin's turn is per replica; with every backlogged flow spread over the replicas
    (Envoy picks a picker per request, whatever its fairness id), each replica alternates the
    same flows, so the pool's dispatches split evenly too. A flow confined to one replica gets
    a turn on that replica only: least-attained-service (pool-wide service) is the policy then."""

    def replica(flows: list[str]) -> tuple[FlowController, list]:
        fc, st = make(CONC1)
        log: list = []
        submit(fc, st, log, "busy")
        for i in range(6):
            for f in flows:
                submit(fc, st, log, f"{f}{i}", flow=f)
        return fc, st, log

    def run(reps) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _ in range(6):  # each replica dispatches 6 (its pod frees 6 times)
            for fc, st, log in reps:
                st.on_completed(log[-1], NOW)
                fc.pump(NOW)
                counts[log[-1][0]] = counts.get(log[-1][0], 0) + 1
        return counts

    assert run([replica(["A", "B"]), replica(["A", "B"])]) == {"A": 6, "B": 6}
    assert run([replica(["A", "B"]), replica(["A"])]) == {"A": 9, "B": 3}  # B confined to one replica


def test_band_bounds_are_the_pools_each_replica_keeps_its_part():
    fc, st = make(replace(CONC1, max_requests_per_band=8))
    alive = [4]
    fc.replicas = lambda: alive[0]
    log: list = []
    submit(fc, st, log, "busy")
    outs = [submit(fc, st, log, f"q{i}")[0] for i in range(3)]
    assert [w.outcome for w in outs] == [None, None, (429, "direct")]  # 8 / 4 replicas = 2 here
    alive[0] = 1  # the peers are gone: the whole bound
    assert submit(fc, st, log, "q3")[0].outcome is None
