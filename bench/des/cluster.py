"""The discrete-event simulation: N calibrated engines, M picker replicas, virtual time.

The picker side is the **real code** over an in-memory bus: every replica is a
:class:`picker.view.PoolView` fed by a last-value subscription, feeding its profile's pool
state, admission and scheduler (:class:`picker.scheduling.Profile`), and, with
the shared view, the sharing layer's :class:`~picker.sharing.EventBatcher` (its own
traffic) and :class:`~picker.sharing.PeerListener` (its peers'), connected by a
:class:`shared.bus.MemoryBus` whose deliveries are events on the simulation's heap. One
event heap orders everything by virtual time (ties by insertion order, so a run is a
pure function of its seed):

* **arrival** - Poisson; the request goes to a picker replica (round-robin or random),
  which admits and schedules it from the endpoint snapshots *that replica has received*
  (its pool state), as the director does; a 429/503 is counted as shed, not served;
  otherwise the replica's state accounts it at once (``on_assigned``) and, with the
  shared view, the replica's batcher publishes it;
* **step end** - one engine step (``Engine.step`` commits at its start, the DES reveals
  it at ``end``): finished requests are recorded, ``on_completed`` runs on the assigning
  replica's state and its batcher publishes the completion; the next step starts;
* **wake** - an idle engine has a request coming out of its API overhead;
* **scrape** - every ``scrape_interval_s`` per engine (phases staggered at random), an
  ``EndpointSnapshot`` is built from ``engine.stats()`` with ``ts`` = scrape time and
  published on the endpoint's subject, as the collector does;
* **bus delivery** - the bus delivers a message ``metrics_delay_s`` (endpoint subjects)
  or ``share_delay_s`` (event subjects) after its publish, to the subscriptions that
  existed at publish time;
* **flush** - a replica's batcher is due (its linger, or a heartbeat when idle);
* **watch** - every 0.1 s each replica's listener checks its peers and tells its
  pool state its rank and unseen estimate, as the sharing layer's liveness watch does.
* **decide** - with a picker CPU model (``DESConfig.picker_cpu``, bench/des/picker_cpu.py)
  an arrival waits for its replica's core and is decided at this event instead.

So schedulers always decide from metrics between ``metrics_delay_s`` and
``scrape_interval_s + metrics_delay_s`` old, as in the real deployment. ``share_delay_s``
is the measured publish-to-apply p50 over NATS *including* the default 5-ms linger
(bench/results/sharing-bus.md), so the DES's batchers publish without a linger by
default (``sharing``: the settings every replica's sharing layer uses).

Measurement: requests arriving in ``[warmup_s, warmup_s + duration_s)`` are measured;
arrivals stop at the end of that window and the run drains until every measured request
has finished (bounded by ``max_drain_s`` of virtual time; requests still open then are
reported as ``unfinished``). Throughput = measured output tokens / (last measured
response - warmup_s), as the upstream benchmark tool defines it (design.md §5); and the
steady-state rate, output tokens of every response completed inside the window / its
length, which does not charge a policy for the half-empty batches of the final drain.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from picker.scheduling import PoolState, Profile, RequestInfo, SheddingAdmission, build_profile
from picker.sharing import EventBatcher, PeerListener, SharingMetrics, SharingSettings
from picker.view import PoolView
from shared.bus import MemoryBus
from shared.schemas import EndpointSnapshot, LoraState, encode
from shared.subjects import Subjects
from sim.engine import Engine, EngineConfig, SimRequest
from sim.workloads import percentile, poisson_arrivals

from .oracle import PREFILL_WEIGHT, OracleScheduler, cached_prefix_tokens
from .picker_cpu import PickerCores, PickerCpu
from .workload import Sampler, WorkloadSpec

POLICIES = ("round-robin", "random", "gie-v0", "gie-v1", "default", "oracle")
# Profiles a point may also run that the seed experiment does not sweep by default: the
# precise-prefix experiment's (bench/sweep/precise_prefix.py) and the hetero experiment's.
EXTRA_POLICIES = ("precise-prefix", "load-only", "predicted-latency", "predicted-latency-fast")
MODEL = "meta-llama/Llama-2-7b-hf"

NAMESPACE, POOL = "bench", "pool"
WATCH_INTERVAL_S = 0.1  # the sharing layer's liveness watch period

# event kinds (ints: cheap to compare in heap tuples)
ARRIVAL, STEP_END, WAKE, SCRAPE, DELIVER, FLUSH, WATCH, DECIDE = range(8)


def des_sharing() -> SharingSettings:
    """The sharing settings of a DES replica: no linger (it is part of ``share_delay_s``)."""
    return SharingSettings(flush_interval_s=0.0)


@dataclass
class DESConfig:
    """One simulated point. Every knob has the seed experiment's default."""

    policy: str = "default"
    qps: float = 100.0
    replicas: int = 10
    duration_s: float = 60.0
    warmup_s: float = 10.0
    max_drain_s: float = 900.0
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    picker_replicas: int = 1
    spread: str = "round-robin"  # how arrivals reach picker replicas: "round-robin" or "random"
    shared_view: bool = True
    scrape_interval_s: float = 0.050
    metrics_delay_s: float = 0.005
    share_delay_s: float = 0.005  # measured publish-to-apply p50 over NATS (bench/results/sharing-bus.md)
    sharing: SharingSettings = field(default_factory=des_sharing)  # each replica's (name set per replica)
    criticality: str = "Standard"
    sheddable_fraction: float = 0.0  # share of requests sent as "Sheddable"
    seed: int = 0
    engine: EngineConfig = field(default_factory=EngineConfig)
    # A parsed scheduling config (the profiles.yaml mapping); None = the built-in file, read
    # when the point starts. A sweep passes one snapshot so every point measures the same profiles.
    scheduler_config: dict[str, Any] | None = None
    # The picker replicas' own CPU (bench/des/picker_cpu.py); the default charges nothing.
    picker_cpu: PickerCpu = field(default_factory=PickerCpu)

    def label(self) -> dict[str, Any]:
        d = asdict(self)
        d["workload"] = self.workload.name
        d.pop("picker_cpu")  # its name is in the PointResult
        d.pop("engine")
        d.pop("scheduler_config")
        d.pop("sharing")
        return d


@dataclass
class PointResult:
    """The figures of one point (times in seconds)."""

    policy: str
    qps: float
    workload: str
    picker_replicas: int = 1
    shared_view: bool = True
    arrived: int = 0
    served: int = 0
    shed: int = 0
    unfinished: int = 0
    output_tokens: int = 0
    tok_per_min: float = 0.0  # measured requests' output tokens / (last response - warm-up end)
    window_tok_per_min: float = 0.0  # output tokens of responses inside the window / window (steady state)
    req_per_s: float = 0.0
    ntpot_p90: float = math.nan
    e2e_p50: float = math.nan
    e2e_p90: float = math.nan
    ttft_p50: float = math.nan
    ttft_p90: float = math.nan
    preemptions: int = 0
    prefix_hit_rate: float = math.nan  # engines' prefix-cache hits / queries (tokens), measured window
    virtual_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # process CPU time: what the point costs on an idle core
    events: int = 0
    picker_cpu: str = "free"  # the picker CPU model (bench/des/picker_cpu.py)
    picker_wait_p50: float = 0.0  # arrival -> decided on its replica's core, s
    picker_wait_p90: float = 0.0
    picker_util: float = 0.0  # the busiest replica core's demand / the arrivals' span (> 1: overloaded)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Replica:
    """One picker replica: its profile (state, admission, scheduler), its endpoint view, its sharing."""

    __slots__ = ("batcher", "flush_at", "index", "listener", "name", "profile", "view")

    def __init__(self, index: int, profile: Profile, view: PoolView) -> None:
        self.index = index
        self.name = f"picker-{index}"
        self.profile = profile
        self.view = view
        self.batcher: EventBatcher | None = None  # with the shared view
        self.listener: PeerListener | None = None
        self.flush_at: float | None = None  # when the planned flush runs


class Cluster:
    """The simulated deployment for one :class:`DESConfig`. ``run()`` returns a :class:`PointResult`."""

    def __init__(self, cfg: DESConfig) -> None:
        if cfg.policy not in POLICIES + EXTRA_POLICIES:
            raise ValueError(f"unknown policy {cfg.policy!r} (known: {', '.join(POLICIES)})")
        if cfg.spread not in ("round-robin", "random"):
            raise ValueError("spread must be 'round-robin' or 'random'")
        self.cfg = cfg
        root = random.Random(cfg.seed)
        # Independent streams, so that e.g. a policy's random choices never change the workload.
        self._rng_arrivals = random.Random(root.getrandbits(64))
        self._rng_work = random.Random(root.getrandbits(64))
        self._rng_spread = random.Random(root.getrandbits(64))
        self._rng_phase = random.Random(root.getrandbits(64))
        self._rng_sched = random.Random(root.getrandbits(64))
        self._rng_crit = random.Random(root.getrandbits(64))
        self.sampler = Sampler(cfg.workload, self._rng_work)
        ecfg = cfg.engine
        if cfg.workload.name == "lora" and not ecfg.enable_lora:
            ecfg = replace(ecfg, enable_lora=True)
        self.addresses = [f"10.0.{i // 250}.{i % 250 + 1}:8000" for i in range(cfg.replicas)]
        self.engines = {a: Engine(ecfg) for a in self.addresses}
        self.work: dict[str, float] = dict.fromkeys(self.addresses, 0.0)
        self.max_loras = ecfg.max_loras if ecfg.enable_lora else 0
        # What /v1/models would list: every server has every adapter loaded (max_cpu_loras 12).
        self.served_models = [MODEL, *self.sampler.adapters]
        self.is_oracle = cfg.policy == "oracle"
        self._heap: list[tuple] = []
        self._seq = 0
        self.now = 0.0
        self.subjects = Subjects()
        self.bus = MemoryBus(
            self.subjects, delay=self._bus_delay, clock=lambda: self.now, call_later=self._call_later
        )
        self._endpoint_subject = {
            a: self.subjects.endpoint(NAMESPACE, POOL, f"pod-{a}", 8000) for a in self.addresses
        }
        self._busy: dict[str, bool] = dict.fromkeys(self.addresses, False)
        self._snap_seq = 0
        self._rr = 0
        # measurement
        self.records: list[tuple[float, float, int]] = []  # (ttft, e2e, output tokens) of measured requests
        self.last_finish = 0.0
        self.arrived = 0
        self.shed = 0
        self.open_measured = 0
        self.window_tokens = 0
        self.events = 0
        self._prefix_base: tuple[float, float] | None = None
        self._preempt_base = 0
        for a in self.addresses:  # scraped before the start: the stream holds every (idle) pod
            self._publish_snapshot(a, -cfg.metrics_delay_s)
        self.shared = cfg.shared_view and cfg.picker_replicas > 1
        self.pickers = [self._make_replica(p) for p in range(cfg.picker_replicas)]
        self.kv = None  # the KV events path (bench/des/kvprecise.py), for profiles that read it
        if cfg.policy == "precise-prefix":
            from .kvprecise import KVEventsModel

            self.kv = KVEventsModel(self, NAMESPACE, POOL)
        self.cores = PickerCores(cfg.picker_cpu, cfg.picker_replicas) if cfg.picker_cpu.enabled else None
        self.deciding = 0  # measured requests queued for their replica's core

    def _make_replica(self, p: int) -> Replica:
        profile = self._make_profile(p)
        view = PoolView(NAMESPACE, POOL, profile.state, clock=lambda: self.now)
        pk = Replica(p, profile, view)
        # The pickers start by reading the last value of every endpoint, then follow live.
        self.bus.follow_last_values_nowait(self.subjects.endpoints_of_pool(NAMESPACE, POOL), view.on_message)
        if self.shared:
            settings = replace(self.cfg.sharing, replica=pk.name)
            metrics = SharingMetrics()
            clock = lambda: self.now  # noqa: E731
            pk.batcher = EventBatcher(
                self.subjects, NAMESPACE, POOL, settings, metrics=metrics, clock=clock,
                on_wake=lambda: self._plan_flush(pk),
            )  # fmt: skip
            pk.listener = PeerListener(
                self.bus, NAMESPACE, POOL, settings, profile.state, metrics=metrics, clock=clock,
                manage_streams=False,
            )  # fmt: skip
            self.bus.subscribe_nowait(pk.listener.subject, pk.listener.feed.live)
            self._plan_flush(pk)  # the first heartbeat: peers learn of each other
            self._push(WATCH_INTERVAL_S, WATCH, pk)
        return pk

    def _make_profile(self, p: int) -> Profile:
        rng = random.Random(self._rng_sched.getrandbits(64))
        if self.cfg.policy == "oracle":  # never sheds; decides from the engines themselves
            oracle = OracleScheduler(self.engines, self.work, rng, base_model=MODEL)
            return Profile("oracle", PoolState(), SheddingAdmission(frozenset()), oracle)
        return build_profile(self.cfg.policy, self.cfg.scheduler_config, rng=rng)

    # ------------------------------------------------------------------ events

    def _push(self, t: float, kind: int, a: Any = None, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    # ------------------------------------------------------------------ the bus

    def _call_later(self, delay: float, fn: Any) -> None:
        self._push(self.now + delay, DELIVER, fn)

    def _bus_delay(self, subject: str) -> float:
        origin = self.subjects.parse(subject)
        return (
            self.cfg.metrics_delay_s
            if origin is not None and origin.kind == "endpoint"
            else self.cfg.share_delay_s
        )

    def _publish_snapshot(self, address: str, now: float) -> None:
        """What the collector does after a scrape."""
        self.bus.publish_nowait(self._endpoint_subject[address], encode(self._snapshot(address, now)))

    def _plan_flush(self, pk: Replica) -> None:
        """Run the replica's batcher when it is due (earlier than planned: plan again)."""
        assert pk.batcher is not None
        due = max(pk.batcher.due(), self.now)
        if pk.flush_at is None or due < pk.flush_at:
            pk.flush_at = due
            self._push(due, FLUSH, pk, due)

    def _flush(self, pk: Replica, planned: float) -> None:
        if pk.flush_at != planned:
            return  # superseded by an earlier plan
        pk.flush_at = None
        batcher = pk.batcher
        assert batcher is not None
        for message, n in batcher.take():
            data = encode(message)
            self.bus.publish_nowait(batcher.subject, data)
            batcher.sent(message, len(data), n)
        self._plan_flush(pk)

    def _snapshot(self, address: str, now: float) -> EndpointSnapshot:
        st = self.engines[address].stats()
        self._snap_seq += 1
        return EndpointSnapshot(
            namespace="bench",
            pool="pool",
            pod=f"pod-{address}",
            address=address,
            model=MODEL,
            waiting=st.waiting,
            running=st.running,
            kv_usage=st.kv_usage,
            kv_capacity_tokens=st.num_gpu_blocks * self.cfg.engine.block_size,
            block_size=self.cfg.engine.block_size,
            prefix_queries=float(st.prefix_cache_queries),
            prefix_hits=float(st.prefix_cache_hits),
            preemptions=float(st.preemptions),
            lora=LoraState(
                running=st.running_lora_adapters, waiting=st.waiting_lora_adapters, max_lora=self.max_loras
            ),
            served_models=self.served_models,
            ts=now,
            seq=self._snap_seq,
            epoch="des",
            collector="des",
        )

    def _kick(self, address: str, now: float) -> None:
        """Start the engine's next step if it is idle and has (or will have) work."""
        if self._busy[address]:
            return
        eng = self.engines[address]
        t = eng.next_event_time(now)
        if t is None:
            return
        self._busy[address] = True
        if t > now:
            self._push(t, WAKE, address)
            return
        self._step(address, now)

    def _step(self, address: str, now: float) -> None:
        eng = self.engines[address]
        res = eng.step(now)
        if res.preempted:
            for r in res.preempted:  # recompute: its whole context is prefill again
                self.work[address] += PREFILL_WEIGHT * (r.prompt_tokens + eng.num_output(r))
        if res.duration > 0.0:
            self._push(res.end, STEP_END, address, res)
            return
        # Nothing ran (e.g. only requests still in their API overhead): finish what ended, wait.
        self._finish(address, res.finished, now)
        self._busy[address] = False
        nt = eng.next_event_time(now)
        if nt is not None:
            self._busy[address] = True
            self._push(max(nt, now + 1e-4), WAKE, address)

    def _finish(self, address: str, finished: list[SimRequest], now: float) -> None:
        cfg = self.cfg
        t_lo, t_hi = cfg.warmup_s, cfg.warmup_s + cfg.duration_s
        for r in finished:
            info, p, measured, t0 = r.ctx  # t0: the arrival at the picker (before any wait for its core)
            if t_lo <= r.t_finished < t_hi:
                self.window_tokens += r.max_tokens
            if measured:
                self.records.append((r.t_first_token - t0, r.t_finished - t0, r.max_tokens))
                self.open_measured -= 1
                if r.t_finished > self.last_finish:
                    self.last_finish = r.t_finished
            pk = self.pickers[p]
            state = pk.profile.state
            if getattr(state, "observers", None):  # learners (picker.latency) get the outcome
                state.on_outcome(
                    info.request_id, pk.name, 200, r.t_first_token - r.arrival, r.t_finished - r.arrival,
                    r.max_tokens, now,
                )  # fmt: skip
            state.on_completed(info.request_id, now, replica=pk.name)
            if pk.batcher is not None:
                pk.batcher.on_local_completion(
                    info, address, 200, r.prompt_tokens, r.max_tokens, r.t_finished - t0,
                    r.t_first_token - t0, now,
                )  # fmt: skip

    def _on_step_end(self, address: str, res: Any, now: float) -> None:
        eng = self.engines[address]
        w = self.work[address] - (
            res.num_decode + len(res.first_token) + PREFILL_WEIGHT * (res.tokens - res.num_decode)
        )
        self.work[address] = w if eng.num_requests and w > 0.0 else 0.0
        if self.cores is not None:  # the streamed tokens' ext_proc round trips
            self.cores.on_tokens(now, res.num_decode + len(res.first_token))
        self._finish(address, res.finished, now)
        self._busy[address] = False
        self._kick(address, now)

    def _arrive(self, now: float, measured: bool) -> None:
        cfg = self.cfg
        item = self.sampler()
        self.arrived += measured
        crit = cfg.criticality
        if cfg.sheddable_fraction > 0 and self._rng_crit.random() < cfg.sheddable_fraction:
            crit = "Sheddable"
        if cfg.spread == "round-robin":
            p = self._rr % len(self.pickers)
            self._rr += 1
        else:
            p = self._rng_spread.randrange(len(self.pickers))
        rid = f"r{self._seq}"
        info = RequestInfo(
            request_id=rid,
            model=item.lora or MODEL,
            target_model=item.lora or MODEL,
            criticality=crit,
            prompt_tokens=item.prompt_tokens,
            prefix_hashes=item.block_hashes,
            expected_output_tokens=item.output_tokens,
        )
        if self.cores is not None:
            at = self.cores.decide_at(p, now)
            if at > now:  # decided once the replica's core gets to it
                self.deciding += measured
                self._push(at, DECIDE, (p, info, item, measured, now))
                return
        self._decide(p, info, item, measured, now, now)

    def _decide(self, p: int, info: RequestInfo, item: Any, measured: bool, t0: float, now: float) -> None:
        pk = self.pickers[p]
        rid = info.request_id
        decision = pk.profile.decide(info, now)  # admit, then schedule
        if not decision.ok:
            self.shed += measured
            return
        address = decision.endpoints[0]
        pk.profile.state.on_assigned(info, address, now, replica=pk.name)
        if pk.batcher is not None:
            pk.batcher.on_local_assignment(info, address, now)
        eng = self.engines[address]
        cached = cached_prefix_tokens(eng, item.block_hashes) if self.is_oracle else 0
        self.work[address] += PREFILL_WEIGHT * (item.prompt_tokens - cached) + item.output_tokens
        req = SimRequest(rid, item.prompt_tokens, item.output_tokens, item.block_hashes, item.lora)
        req.ctx = (info, p, measured, t0)
        eng.add(req, now)
        if measured:
            self.open_measured += 1
        self._kick(address, now)

    # ------------------------------------------------------------------ the run

    def _engine_totals(self) -> tuple[float, float, int]:
        q = h = 0.0
        pre = 0
        for e in self.engines.values():
            q += e.prefix_queries
            h += e.prefix_hits
            pre += e.preemptions
        return q, h, pre

    def run(self) -> PointResult:
        cfg = self.cfg
        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        t_measure = cfg.warmup_s
        t_stop = cfg.warmup_s + cfg.duration_s
        arrivals = poisson_arrivals(cfg.qps, self._rng_arrivals)
        self._push(next(arrivals), ARRIVAL)
        for a in self.addresses:
            self._push(self._rng_phase.uniform(0.0, cfg.scrape_interval_s), SCRAPE, a)
        heap = self._heap
        pop = heapq.heappop
        deadline = t_stop + cfg.max_drain_s
        stopped = False
        n = 0
        while heap:
            t, _, kind, a, b = pop(heap)
            self.now = t
            n += 1
            if kind == STEP_END:
                self._on_step_end(a, b, t)
            elif kind == ARRIVAL:
                if t >= t_measure and self._prefix_base is None:
                    q, h, pre = self._engine_totals()
                    self._prefix_base = (q, h)
                    self._preempt_base = pre
                self._arrive(t, t >= t_measure)
                nxt = next(arrivals)
                if nxt < t_stop:
                    self._push(nxt, ARRIVAL)
                else:
                    stopped = True
            elif kind == SCRAPE:
                self._publish_snapshot(a, t)
                if self.kv is not None:
                    self.kv.on_scrape(a, t)
                self._push(t + cfg.scrape_interval_s, SCRAPE, a)
            elif kind == DELIVER:
                a()
            elif kind == WAKE:
                self._busy[a] = False
                self._kick(a, t)
            elif kind == FLUSH:
                self._flush(a, b)
            elif kind == WATCH:
                a.listener.check_peers(t)
                self._push(t + WATCH_INTERVAL_S, WATCH, a)
            elif kind == DECIDE:
                self.deciding -= a[3]
                self._decide(*a, t)
            if stopped and self.open_measured <= 0 and self.deciding <= 0:
                break
            if t > deadline:
                break
        q, h, pre = self._engine_totals()
        q0, h0 = self._prefix_base or (0.0, 0.0)
        res = self._result(q - q0, h - h0, pre - self._preempt_base, time.perf_counter() - wall0, n)
        res.cpu_s = time.process_time() - cpu0
        return res

    def _result(self, queries: float, hits: float, preemptions: int, wall: float, events: int) -> PointResult:
        cfg = self.cfg
        recs = self.records
        ttft = [r[0] for r in recs]
        e2e = [r[1] for r in recs]
        ntpot = [r[1] / r[2] for r in recs]
        out = sum(r[2] for r in recs)
        span = self.last_finish - cfg.warmup_s
        return PointResult(
            policy=cfg.policy,
            qps=cfg.qps,
            workload=cfg.workload.name,
            picker_replicas=cfg.picker_replicas,
            shared_view=cfg.shared_view,
            arrived=self.arrived,
            served=len(recs),
            shed=self.shed,
            unfinished=max(0, self.open_measured) + max(0, self.deciding),
            output_tokens=out,
            tok_per_min=out / span * 60.0 if span > 0 else 0.0,
            window_tok_per_min=self.window_tokens / cfg.duration_s * 60.0,
            req_per_s=len(recs) / span if span > 0 else 0.0,
            ntpot_p90=percentile(ntpot, 90),
            e2e_p50=percentile(e2e, 50),
            e2e_p90=percentile(e2e, 90),
            ttft_p50=percentile(ttft, 50),
            ttft_p90=percentile(ttft, 90),
            preemptions=preemptions,
            prefix_hit_rate=hits / queries if queries > 0 else math.nan,
            virtual_s=self.now,
            wall_s=wall,
            events=events,
            picker_cpu=cfg.picker_cpu.name,
            picker_wait_p50=percentile(self.cores.waits, 50) if self.cores else 0.0,
            picker_wait_p90=percentile(self.cores.waits, 90) if self.cores else 0.0,
            picker_util=self.cores.utilization(cfg.warmup_s + cfg.duration_s) if self.cores else 0.0,
        )


def run_point(cfg: DESConfig) -> PointResult:
    """Simulate one point (a top-level function, so a process pool can run it)."""
    return Cluster(cfg).run()
