"""A vLLM v1 engine model that never reads a clock: the caller advances it.

The same :class:`Engine` runs in real time behind the HTTP server (an asyncio task
sleeps for each step's duration) and in virtual time inside a discrete-event
simulation (the DES jumps its clock to ``result.end``). See ``sim/README.md``.

Usage::

    eng = Engine(EngineConfig())
    eng.add(SimRequest("r1", prompt_tokens=580, max_tokens=250), now=0.0)
    t = eng.next_event_time(0.0)          # when the engine next has something to do
    while t is not None:
        res = eng.step(t)                 # schedules one step starting at t
        ...                               # res.first_token / res.finished happen at res.end
        t = eng.next_event_time(res.end)

Semantics (vLLM v1 scheduler, ``vllm/v1/core/sched/scheduler.py``):

* continuous batching: every step, running requests first (in admission order), then
  waiting ones FCFS (or by ``priority``, lower first), under a token budget
  (``max_num_batched_tokens``) with chunked prefill and at most ``max_num_seqs`` running;
* a KV cache of ``block_size``-token blocks; a request holds ``ceil(tokens/16)`` blocks;
* prefix caching: chained block hashes (given by the caller), cached blocks reused with
  reference counts, free blocks kept in one LRU queue (cached or not) and evicted from
  its head when new blocks are needed; a full prompt hit still recomputes one token;
* when a running request cannot get a block, the newest running request is preempted
  (its blocks freed, its tokens recomputed later: vLLM v1 "recompute"); no new request
  is admitted in a step that preempted;
* LoRA: at most ``max_loras`` distinct adapters in a batch (a waiting request whose
  adapter does not fit is skipped, not blocking), a CPU cache of ``max_cpu_loras``
  adapters (LRU) and GPU slots (LRU); a step that loads an adapter from disk takes
  ``lora_load_s`` longer, one that activates a CPU-cached adapter ``lora_activate_s``;
* step time ``T = factor * (0.5 ms + max(5.6 ms, 1.0 ms + 20 us * N) + 0.196 us * C)``,
  N = tokens scheduled, C = context tokens attended by the batch (design.md §5);
  ``factor = slowdown`` (x ``lora_enabled_factor`` when the server runs with LoRA enabled);
* a request becomes visible to the scheduler ``api_overhead_s`` after ``add`` (the HTTP,
  tokenization and detokenization cost of the API server), so it adds to TTFT and e2e.

Speed: pure-decode requests are not touched per step. A global step counter ``k`` and
each request's (step, context) at decode start give its token count; a heap keyed by
the finishing step finds completions; block needs are counted per phase
(``(context - start_step) mod block_size``); C is an incrementally kept sum.
``step()`` commits the step's effects immediately; the caller reveals them at ``end``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from itertools import count

# Request states
PENDING, WAITING, PREFILL, DECODE, FINISHED, ABORTED = range(6)
STATE_NAMES = ("pending", "waiting", "prefill", "decode", "finished", "aborted")

# Calibrated factors (sim/README.md "Calibration"; `infergate-sim calibrate`):
# SLOWDOWN fits the measured vLLM v1 points (no LoRA); LORA_ENABLED_FACTOR is what the
# upstream benchmark deployment (LoRA enabled, older vLLM) adds, fit to 26 req/s on ShareGPT.
DEFAULT_SLOWDOWN = 0.79
DEFAULT_LORA_ENABLED_FACTOR = 1.82


@dataclass
class EngineConfig:
    """Engine parameters. Defaults: Llama-2-7B on one H100 80 GB (design.md §5)."""

    model: str = "meta-llama/Llama-2-7b-hf"
    kv_capacity_tokens: int = 119_408  # 7,463 blocks x 16
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"  # or "priority" (lower value first; preemption stays newest-first)
    # LoRA
    enable_lora: bool = True
    max_loras: int = 4
    max_cpu_loras: int = 12
    lora_load_s: float = 0.050  # disk -> CPU cache (rank-16 q/k/v/o adapter of a 7B model, ~30-70 MB)
    lora_activate_s: float = 0.002  # CPU cache -> a GPU slot
    lora_enabled_factor: float = DEFAULT_LORA_ENABLED_FACTOR  # step-time factor when enable_lora
    # Timing
    slowdown: float = DEFAULT_SLOWDOWN
    api_overhead_s: float = 0.010
    step_base_s: float = 0.0005
    step_floor_s: float = 0.0056
    step_n_base_s: float = 0.0010
    step_per_token_s: float = 20e-6
    step_per_ctx_s: float = 0.196e-6

    @property
    def num_gpu_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    def validate(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (as vLLM requires)")
        if self.block_size <= 0 or self.num_gpu_blocks <= 0:
            raise ValueError("block_size and kv_capacity_tokens must be positive")
        if self.max_loras < 1 or self.max_cpu_loras < self.max_loras:
            raise ValueError("need 1 <= max_loras <= max_cpu_loras")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError("scheduling_policy must be 'fcfs' or 'priority'")

    def step_time(self, n_tokens: int, ctx_tokens: int) -> float:
        """Duration of one step scheduling ``n_tokens`` over ``ctx_tokens`` of context."""
        busy = self.step_n_base_s + self.step_per_token_s * n_tokens
        if busy < self.step_floor_s:
            busy = self.step_floor_s
        return self.factor * (self.step_base_s + busy + self.step_per_ctx_s * ctx_tokens)

    @property
    def factor(self) -> float:
        """The total step-time multiplier: slowdown, times lora_enabled_factor with LoRA on."""
        return self.slowdown * (self.lora_enabled_factor if self.enable_lora else 1.0)


class SimRequest:
    """One request. Inputs are set by the caller; the rest is engine state (read-only)."""

    __slots__ = (
        "_gen",
        "arrival",
        "block_hashes",
        "c0",
        "computed",
        "ctx",
        "held_blocks",
        "held_hashes",
        "id",
        "k0",
        "kf",
        "lora",
        "max_tokens",
        "num_preemptions",
        "out",
        "out0",
        "prefix_hit_tokens",
        "priority",
        "prompt_tokens",
        "ready_at",
        "seq",
        "state",
        "t_finished",
        "t_first_token",
        "t_scheduled",
    )

    def __init__(
        self,
        id: str,
        prompt_tokens: int,
        max_tokens: int,
        block_hashes: list[int] | None = None,
        lora: str | None = None,
        arrival: float = 0.0,
        priority: int = 0,
        ctx: object = None,
    ) -> None:
        if prompt_tokens < 1 or max_tokens < 1:
            raise ValueError("prompt_tokens and max_tokens must be >= 1")
        self.id = id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.block_hashes = block_hashes if block_hashes is not None else []
        self.lora = lora or None
        self.arrival = arrival
        self.priority = priority
        self.ctx = ctx  # free slot for the caller (HTTP handler state, DES bookkeeping)
        self.state = PENDING
        self.ready_at = arrival
        self.seq = 0
        self.computed = 0  # tokens whose KV is computed (valid unless state == DECODE)
        self.out = 0  # output tokens generated (valid unless state == DECODE)
        self.held_blocks = 0  # valid unless state == DECODE
        self.held_hashes: list[int] = []
        self.k0 = 0  # DECODE: first decode step
        self.c0 = 0  # DECODE: computed tokens before step k0
        self.out0 = 0  # DECODE: output tokens before step k0
        self.kf = -1  # DECODE: step in which the last token is produced
        self._gen = 0
        self.num_preemptions = 0
        self.prefix_hit_tokens = 0  # of the latest admission
        self.t_scheduled = -1.0  # first time scheduled (queue time = t_scheduled - ready_at)
        self.t_first_token = -1.0
        self.t_finished = -1.0

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    def __repr__(self) -> str:
        return f"SimRequest({self.id!r}, p={self.prompt_tokens}, m={self.max_tokens}, {self.state_name})"


_EMPTY: tuple = ()


class StepResult:
    """What one step did. Events in the lists happen at ``end`` (= start + duration)."""

    __slots__ = (
        "ctx_tokens",
        "duration",
        "end",
        "finished",
        "first_token",
        "num_decode",
        "preempted",
        "start",
        "tokens",
    )

    def __init__(self, start, duration, tokens, ctx_tokens, num_decode, first_token, finished, preempted):
        self.start = start
        self.duration = duration
        self.end = start + duration
        self.tokens = tokens  # N: tokens scheduled (prefill chunks + one per decoding request)
        self.ctx_tokens = ctx_tokens  # C
        self.num_decode = num_decode  # decoding requests that produced a token this step
        self.first_token = first_token  # requests whose first token was produced
        self.finished = finished  # requests that produced their last token
        self.preempted = preempted  # requests preempted (back to waiting)

    def __repr__(self) -> str:
        return (
            f"StepResult(start={self.start:.6f}, dur={self.duration * 1e3:.3f}ms, N={self.tokens}, "
            f"C={self.ctx_tokens}, first={len(self.first_token)}, fin={len(self.finished)}, "
            f"pre={len(self.preempted)})"
        )


@dataclass
class EngineStats:
    """What vLLM's /metrics reports, plus a few simulator counters."""

    waiting: int
    running: int
    pending: int
    kv_usage: float
    num_gpu_blocks: int
    free_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    preemptions: int
    running_lora_adapters: list[str] = field(default_factory=list)
    waiting_lora_adapters: list[str] = field(default_factory=list)
    steps: int = 0
    finished: int = 0
    aborted: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    busy_time: float = 0.0


class Engine:
    """One model server's engine core. Not thread-safe; never blocks; never reads a clock."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        cfg = config or EngineConfig()
        cfg.validate()
        self.cfg = cfg
        self._factor = cfg.factor
        self.bs = cfg.block_size
        self.total_blocks = cfg.num_gpu_blocks
        self.k = 0  # index of the next step
        self._seq = count()
        self._anon = count(1)
        # queues
        self._pending: list = []  # heap (ready_at, seq, req)
        self._waiting: deque[SimRequest] = deque()  # FCFS; lazily skips aborted entries
        self._waiting_heap: list = []  # priority policy: (priority, arrival, seq, req)
        self.n_waiting = 0
        self.running: OrderedDict[int, SimRequest] = OrderedDict()  # admission order, key = seq
        self._prefilling: list[SimRequest] = []  # suffix of running still in prefill, in order
        # decode aggregates
        self.n_dec = 0
        self._dec_ctx_base = 0  # sum over decoding of (c0 - k0): their context before step k = base + n*k
        self._phase = [0] * self.bs  # decoding requests by (c0 - k0) mod bs
        self._fin_heap: list = []  # (kf, seq, gen, req)
        # KV blocks
        self.num_free = self.total_blocks
        self._cached: dict[int, int] = {}  # block hash -> ref count
        self._fq: OrderedDict[int, int] = OrderedDict()  # free queue: hash -> 1 or -id -> run length
        if cfg.enable_prefix_caching:
            self._fq[-next(self._anon)] = self.total_blocks
        # LoRA
        self._run_lora: dict[str, int] = {}
        self._wait_lora: dict[str, int] = {}
        self._cpu_loras: OrderedDict[str, None] = OrderedDict()
        self._gpu_loras: OrderedDict[str, None] = OrderedDict()
        self.lora_loads = 0
        # counters
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.steps = 0
        self.finished = 0
        self.aborted = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.busy_time = 0.0
        self._by_id: dict[str, SimRequest] = {}

    # ------------------------------------------------------------------ public API

    @property
    def has_work(self) -> bool:
        """Something is running or waiting (a step now would do work)."""
        return bool(self.running) or self.n_waiting > 0

    busy = has_work

    @property
    def num_requests(self) -> int:
        return len(self._by_id)

    def next_event_time(self, now: float) -> float | None:
        """When to call :meth:`step` next: ``now`` if there is work, else the next
        pending request's ready time, else ``None`` (idle until :meth:`add`)."""
        if self.running or self.n_waiting:
            return now
        if self._pending:
            return max(now, self._pending[0][0])
        return None

    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        """Whether a request of this size could ever run (max_model_len and KV capacity)."""
        total = prompt_tokens + max_tokens
        return total <= self.cfg.max_model_len and -(-total // self.bs) <= self.total_blocks

    def add(self, req: SimRequest, now: float) -> None:
        """Submit ``req`` at ``now``; it reaches the scheduler at ``now + api_overhead_s``."""
        if req.id in self._by_id:
            raise ValueError(f"duplicate request id {req.id!r}")
        if -(-(req.prompt_tokens + req.max_tokens) // self.bs) > self.total_blocks:
            raise ValueError("request can never fit in the KV cache")
        req.arrival = now
        req.seq = next(self._seq)
        self._by_id[req.id] = req
        req.ready_at = now + self.cfg.api_overhead_s
        if self.cfg.api_overhead_s > 0:
            req.state = PENDING
            heapq.heappush(self._pending, (req.ready_at, req.seq, req))
        else:
            self._enqueue(req)

    def cached_prefix_tokens(self, block_hashes: list[int]) -> int:
        """Leading tokens of a prompt with these block hashes that are in the prefix cache now
        (blocks in use or free-but-cached); what a new request would hit, before the
        one-token recompute cap. O(hit blocks). 0 with prefix caching disabled."""
        cached = self._cached
        n = 0
        for h in block_hashes:
            if h not in cached:
                break
            n += 1
        return n * self.bs

    def get(self, req_id: str) -> SimRequest | None:
        return self._by_id.get(req_id)

    def num_output(self, req: SimRequest) -> int:
        """Output tokens generated so far (including the step in flight)."""
        if req.state == DECODE:
            return req.out0 + (self.k - req.k0)
        return req.out

    def abort(self, req_id: str) -> bool:
        """Remove a request (client went away). Returns False if unknown or already done."""
        req = self._by_id.pop(req_id, None)
        if req is None:
            return False
        st = req.state
        if st == PENDING:
            pass  # its heap entry is skipped lazily
        elif st == WAITING:
            self._unwait(req)
        elif st in (PREFILL, DECODE):
            self._remove_running(req)
            self._free_blocks(req)
        else:
            return False
        req.state = ABORTED
        self.aborted += 1
        return True

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=self.n_waiting,
            running=len(self.running),
            pending=len(self._pending),
            kv_usage=self.kv_usage,
            num_gpu_blocks=self.total_blocks,
            free_blocks=self.num_free,
            prefix_cache_queries=self.prefix_queries,
            prefix_cache_hits=self.prefix_hits,
            preemptions=self.preemptions,
            running_lora_adapters=[a for a, n in self._run_lora.items() if n > 0],
            waiting_lora_adapters=[a for a, n in self._wait_lora.items() if n > 0],
            steps=self.steps,
            finished=self.finished,
            aborted=self.aborted,
            prompt_tokens=self.prompt_tokens_total,
            generation_tokens=self.generation_tokens_total,
            busy_time=self.busy_time,
        )

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free / self.total_blocks

    @property
    def running_loras(self) -> list[str]:
        return [a for a, n in self._run_lora.items() if n > 0]

    @property
    def waiting_loras(self) -> list[str]:
        return [a for a, n in self._wait_lora.items() if n > 0]

    @property
    def cpu_loras(self) -> list[str]:
        return list(self._cpu_loras)

    def evict_lora(self, name: str) -> None:
        """Drop an adapter from the CPU cache and GPU slots (on unload)."""
        self._cpu_loras.pop(name, None)
        self._gpu_loras.pop(name, None)

    def preload_lora(self, name: str) -> None:
        """Put an adapter in the CPU cache without a load delay (vLLM's startup ``--lora-modules``)."""
        self._touch_cpu_lora(name)

    # ------------------------------------------------------------------ the step

    def step(self, now: float) -> StepResult:
        """Schedule and run one step starting at ``now``; returns its duration and events."""
        cfg = self.cfg
        bs = self.bs
        pend = self._pending
        while pend and pend[0][0] <= now:
            req = heapq.heappop(pend)[2]
            if req.state == PENDING:
                self._enqueue(req)
        k = self.k
        budget = cfg.max_num_batched_tokens
        preempted: list[SimRequest] = []
        first: list[SimRequest] = []
        finished: list[SimRequest] = []

        # 1. decoding requests (the head of `running`): one token each
        if self.n_dec:
            need = self._phase[(-k) % bs]
            if need > self.num_free:
                need = self._preempt_until(need, preempted, k)
            if need:
                self._alloc(need)
        n_dec = self.n_dec
        tokens = n_dec
        ctx = self._dec_ctx_base + n_dec * (k + 1)
        budget -= n_dec
        lora_extra = 0.0

        # 2. running requests still in prefill (the tail of `running`), in order
        if self._prefilling and budget > 0:
            done_prefill = []
            for req in list(self._prefilling):
                if req.state != PREFILL:
                    continue  # preempted by an earlier iteration
                if budget <= 0:
                    break
                n = self._schedule_prefill(req, budget, preempted, k)
                if n == 0:
                    break  # it was preempted itself
                budget -= n
                tokens += n
                ctx += req.computed
                if req.computed >= req.prompt_tokens + req.out:
                    done_prefill.append(req)
            for req in done_prefill:
                self._finish_prefill(req, k, now, first, finished)

        # 3. waiting requests, unless this step preempted
        if not preempted and self.n_waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            n, c, lora_extra = self._admit(budget, k, now, first, finished)
            tokens += n
            ctx += c
        elif self._run_lora and cfg.enable_lora:
            lora_extra = self._lora_step_cost()

        # 4. decode completions of this step
        fh = self._fin_heap
        while fh and fh[0][0] <= k:
            _, _, gen, req = heapq.heappop(fh)
            if req.state != DECODE or req._gen != gen:
                continue  # stale entry (preempted or aborted)
            finished.append(req)

        if tokens == 0:
            self.k = k + 1
            return StepResult(now, 0.0, 0, 0, 0, first, finished, preempted)

        busy = cfg.step_n_base_s + cfg.step_per_token_s * tokens
        if busy < cfg.step_floor_s:
            busy = cfg.step_floor_s
        dur = self._factor * (cfg.step_base_s + busy + cfg.step_per_ctx_s * ctx) + lora_extra
        end = now + dur
        self.k = k + 1
        self.steps += 1
        self.busy_time += dur
        self.generation_tokens_total += n_dec
        for req in first:
            req.t_first_token = end
        for req in finished:
            self._complete(req, end)
        return StepResult(now, dur, tokens, ctx, n_dec, first, finished, preempted)

    # ------------------------------------------------------------------ internals

    def _enqueue(self, req: SimRequest, front: bool = False) -> None:
        req.state = WAITING
        self.n_waiting += 1
        if req.lora:
            self._wait_lora[req.lora] = self._wait_lora.get(req.lora, 0) + 1
        if self.cfg.scheduling_policy == "priority":
            heapq.heappush(self._waiting_heap, (req.priority, req.arrival, req.seq, req))
        elif front:
            self._waiting.appendleft(req)
        else:
            self._waiting.append(req)

    def _unwait(self, req: SimRequest) -> None:
        """Bookkeeping when a request leaves the waiting queue (entry removed lazily or by caller)."""
        self.n_waiting -= 1
        if req.lora:
            n = self._wait_lora[req.lora] - 1
            if n:
                self._wait_lora[req.lora] = n
            else:
                del self._wait_lora[req.lora]

    def _add_running(self, req: SimRequest) -> None:
        self.running[req.seq] = req
        if req.lora:
            self._run_lora[req.lora] = self._run_lora.get(req.lora, 0) + 1

    def _remove_running(self, req: SimRequest) -> None:
        del self.running[req.seq]
        if req.lora:
            n = self._run_lora[req.lora] - 1
            if n:
                self._run_lora[req.lora] = n
            else:
                del self._run_lora[req.lora]
        if req.state == DECODE:
            self._materialize(req)
            self.n_dec -= 1
            d = req.c0 - req.k0
            self._dec_ctx_base -= d
            self._phase[d % self.bs] -= 1
            req._gen += 1
        else:
            self._prefilling.remove(req)

    def _materialize(self, req: SimRequest) -> None:
        """Turn a decoding request's derived counters into explicit ones."""
        steps = self.k - req.k0
        req.computed = req.c0 + steps
        req.out = req.out0 + steps
        req.held_blocks = -(-req.computed // self.bs)

    # KV blocks ---------------------------------------------------------

    def _alloc(self, n: int) -> None:
        self.num_free -= n
        if not self.cfg.enable_prefix_caching:
            return
        fq = self._fq
        cached = self._cached
        while n > 0:
            key, cnt = fq.popitem(last=False)
            if key >= 0:  # a cached block: evict its hash
                del cached[key]
                n -= 1
            elif cnt > n:
                fq[key] = cnt - n
                fq.move_to_end(key, last=False)
                n = 0
            else:
                n -= cnt

    def _free_blocks(self, req: SimRequest) -> None:
        held = req.held_blocks
        req.held_blocks = 0
        if not self.cfg.enable_prefix_caching:
            self.num_free += held
            return
        hashes = req.held_hashes
        fq = self._fq
        anon = held - len(hashes)
        freed = anon
        if anon > 0:
            fq[-next(self._anon)] = anon
        cached = self._cached
        for h in reversed(hashes):
            r = cached[h] - 1
            cached[h] = r
            if r == 0:  # shared blocks stay in use until their last holder leaves
                fq[h] = 1
                freed += 1
        self.num_free += freed
        req.held_hashes = []

    def _register_blocks(self, req: SimRequest) -> None:
        """Cache the prompt's newly completed full blocks under their hashes."""
        hashes = req.block_hashes
        if not hashes:
            return
        full = min(req.computed // self.bs, len(hashes), req.prompt_tokens // self.bs)
        held = req.held_hashes
        i = len(held)  # blocks [0, len(held)) are hashed (a prefix of the prompt)
        if i >= full:
            return
        cached = self._cached
        while i < full:
            h = hashes[i]
            if h in cached:
                break  # a duplicate computed concurrently elsewhere: the rest stays anonymous
            cached[h] = 1
            held.append(h)
            i += 1

    # preemption --------------------------------------------------------

    def _preempt_until(self, need: int, preempted: list, k: int) -> int:
        """Preempt the newest running requests until ``need`` decode blocks fit; returns the new need."""
        bs = self.bs
        key = (-k) % bs
        while need > self.num_free and self.running:
            victim = next(reversed(self.running.values()))
            if victim.state == DECODE and (victim.c0 - victim.k0) % bs == key:
                need -= 1
            self._preempt(victim, preempted)
        return need

    def _preempt(self, req: SimRequest, preempted: list) -> None:
        self._remove_running(req)
        self._free_blocks(req)
        req.computed = 0
        req.num_preemptions += 1
        self.preemptions += 1
        preempted.append(req)
        self._enqueue(req, front=True)

    # prefill -----------------------------------------------------------

    def _schedule_prefill(self, req: SimRequest, budget: int, preempted: list, k: int) -> int:
        """Give a running prefill request its next chunk; returns tokens scheduled (0: preempted)."""
        n = req.prompt_tokens + req.out - req.computed
        if n > budget:
            n = budget
        need = -(-(req.computed + n) // self.bs) - req.held_blocks
        while need > self.num_free:
            victim = next(reversed(self.running.values()))
            self._preempt(victim, preempted)
            if victim is req:
                return 0
        if need > 0:
            self._alloc(need)
            req.held_blocks += need
        req.computed += n
        if self.cfg.enable_prefix_caching:
            self._register_blocks(req)
        return n

    def _finish_prefill(self, req: SimRequest, k: int, now: float, first: list, finished: list) -> None:
        """The step that computes a request's last prompt token samples one output token."""
        self._prefilling.remove(req)
        if req.out == 0:
            first.append(req)
        req.out += 1
        self.generation_tokens_total += 1
        req.state = DECODE
        self._start_decode(req, k + 1)
        if req.out >= req.max_tokens:
            finished.append(req)  # _complete removes it at the end of the step

    def _start_decode(self, req: SimRequest, k0: int) -> None:
        req.k0 = k0
        req.c0 = req.computed
        req.out0 = req.out
        d = req.c0 - k0
        self.n_dec += 1
        self._dec_ctx_base += d
        self._phase[d % self.bs] += 1
        req._gen += 1
        if req.out0 < req.max_tokens:
            req.kf = k0 + req.max_tokens - req.out0 - 1
            heapq.heappush(self._fin_heap, (req.kf, req.seq, req._gen, req))

    def _complete(self, req: SimRequest, end: float) -> None:
        self._remove_running(req)  # materializes
        self._free_blocks(req)
        req.state = FINISHED
        req.t_finished = end
        self.finished += 1
        self._by_id.pop(req.id, None)

    # admission ---------------------------------------------------------

    def _admit(self, budget: int, k: int, now: float, first: list, finished: list) -> tuple[int, int, float]:
        cfg = self.cfg
        bs = self.bs
        max_seqs = cfg.max_num_seqs
        lora_on = cfg.enable_lora
        sched_loras = set(self._run_lora) if lora_on else None
        prio = cfg.scheduling_policy == "priority"
        wq = self._waiting
        wh = self._waiting_heap
        skipped: list[SimRequest] = []
        tokens = 0
        ctx = 0
        caching = cfg.enable_prefix_caching
        cached = self._cached
        while budget > 0 and len(self.running) < max_seqs:
            if prio:
                if not wh:
                    break
                req = wh[0][3]
                if req.state != WAITING:
                    heapq.heappop(wh)
                    continue
            else:
                if not wq:
                    break
                req = wq[0]
                if req.state != WAITING:
                    wq.popleft()
                    continue
            lora = req.lora
            if lora and lora_on and lora not in sched_loras and len(sched_loras) >= cfg.max_loras:
                if prio:
                    heapq.heappop(wh)
                else:
                    wq.popleft()
                skipped.append(req)
                continue
            num_tokens = req.prompt_tokens + req.out
            # prefix cache lookup (a full hit still recomputes the last token)
            hit_blocks = 0
            evictable = 0
            if caching and req.block_hashes:
                limit = (num_tokens - 1) // bs
                for h in req.block_hashes:
                    if hit_blocks >= limit:
                        break
                    r = cached.get(h)
                    if r is None:
                        break
                    if r == 0:
                        evictable += 1
                    hit_blocks += 1
            hit_tokens = hit_blocks * bs
            n = num_tokens - hit_tokens
            if n > budget:
                n = budget
            need = -(-(hit_tokens + n) // bs) - hit_blocks
            if need + evictable > self.num_free:
                break  # KV full: stop admitting (FCFS)
            # admit
            if prio:
                heapq.heappop(wh)
            else:
                wq.popleft()
            self._unwait(req)
            held = req.held_hashes
            if hit_blocks:
                fq = self._fq
                for h in req.block_hashes[:hit_blocks]:
                    r = cached[h]
                    if r == 0:
                        del fq[h]
                        self.num_free -= 1
                    cached[h] = r + 1
                    held.append(h)
            if need:
                self._alloc(need)
            req.held_blocks = hit_blocks + need
            req.computed = hit_tokens + n
            req.prefix_hit_tokens = hit_tokens
            self.prefix_queries += num_tokens
            self.prefix_hits += hit_tokens
            if req.t_scheduled < 0:
                req.t_scheduled = now
                self.prompt_tokens_total += req.prompt_tokens
            if caching:
                self._register_blocks(req)
            req.state = PREFILL
            self._add_running(req)
            self._prefilling.append(req)
            if lora and lora_on:
                sched_loras.add(lora)
            budget -= n
            tokens += n
            ctx += req.computed
            if req.computed >= num_tokens:
                self._finish_prefill(req, k, now, first, finished)
        if skipped:
            if prio:
                for req in skipped:
                    heapq.heappush(wh, (req.priority, req.arrival, req.seq, req))
            else:
                wq.extendleft(reversed(skipped))
        lora_extra = self._lora_step_cost() if (lora_on and self._run_lora) else 0.0
        return tokens, ctx, lora_extra

    # LoRA --------------------------------------------------------------

    def _touch_cpu_lora(self, name: str) -> bool:
        """Make ``name`` CPU-resident; True if it had to be loaded from disk."""
        cpu = self._cpu_loras
        if name in cpu:
            cpu.move_to_end(name)
            return False
        cpu[name] = None
        while len(cpu) > self.cfg.max_cpu_loras:
            old, _ = cpu.popitem(last=False)
            self._gpu_loras.pop(old, None)
        return True

    def _lora_step_cost(self) -> float:
        """Extra step time to make the batch's adapters GPU-resident (LRU slots)."""
        cfg = self.cfg
        gpu = self._gpu_loras
        extra = 0.0
        for name in self._run_lora:
            if name in gpu:
                gpu.move_to_end(name)
                continue
            if self._touch_cpu_lora(name):
                extra += cfg.lora_load_s
                self.lora_loads += 1
            else:
                self._cpu_loras.move_to_end(name)
            extra += cfg.lora_activate_s
            gpu[name] = None
            while len(gpu) > cfg.max_loras:
                gpu.popitem(last=False)
        return extra

    # ------------------------------------------------------------------ testing aid

    def check_invariants(self) -> None:
        """Assert the block and counter bookkeeping is consistent (O(everything); tests only)."""
        held = 0
        refs: dict[int, int] = {}
        n_dec = 0
        for req in self.running.values():
            if req.state == DECODE:
                n_dec += 1
                blocks = -(-(req.c0 + self.k - req.k0) // self.bs)
            else:
                assert req.state == PREFILL, req
                blocks = req.held_blocks
            assert len(req.held_hashes) <= blocks, req
            held += blocks - len(req.held_hashes)  # shared cached blocks are counted once below
            for h in req.held_hashes:
                refs[h] = refs.get(h, 0) + 1
        held += len(refs)
        assert n_dec == self.n_dec
        assert held + self.num_free == self.total_blocks, (held, self.num_free, self.total_blocks)
        if self.cfg.enable_prefix_caching:
            assert sum(self._fq.values()) == self.num_free
            for h, r in self._cached.items():
                assert refs.get(h, 0) == r, (h, r, refs.get(h))
                assert (r == 0) == (h in self._fq)
        waiting = sum(1 for r in self._waiting if r.state == WAITING) + sum(
            1 for e in self._waiting_heap if e[3].state == WAITING
        )
        assert waiting == self.n_waiting, (waiting, self.n_waiting)
        assert len(self.running) <= self.cfg.max_num_seqs
