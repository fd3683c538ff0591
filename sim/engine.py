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
from itertools import count

from sim.config import DEFAULT_LORA_ENABLED_FACTOR, DEFAULT_SLOWDOWN, EngineConfig
from sim.kvcache import KVCache
from sim.lora import LoraSlots
from sim.request import (
    ABORTED,
    DECODE,
    FINISHED,
    PENDING,
    PREFILL,
    STATE_NAMES,
    WAITING,
    EngineStats,
    SimRequest,
    StepResult,
)

__all__ = [
    "ABORTED",
    "DECODE",
    "DEFAULT_LORA_ENABLED_FACTOR",
    "DEFAULT_SLOWDOWN",
    "FINISHED",
    "PENDING",
    "PREFILL",
    "STATE_NAMES",
    "WAITING",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "SimRequest",
    "StepResult",
]


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
        # KV blocks and the prefix cache
        self.kv = KVCache(self.total_blocks, self.bs, cfg.enable_prefix_caching)
        self._cached = self.kv.cached  # the same dict: callers may seed or inspect the cache
        # LoRA
        self.lora = LoraSlots(cfg)
        self._run_lora = self.lora.running  # the same dicts, bound for the hot paths
        self._wait_lora = self.lora.waiting
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
        return self.kv.cached_prefix_tokens(block_hashes)

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
            self.kv.free(req)
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
            free_blocks=self.kv.num_free,
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
        return self.kv.usage

    @property
    def num_free(self) -> int:
        return self.kv.num_free

    @property
    def lora_loads(self) -> int:
        return self.lora.loads

    @property
    def running_loras(self) -> list[str]:
        return [a for a, n in self._run_lora.items() if n > 0]

    @property
    def waiting_loras(self) -> list[str]:
        return [a for a, n in self._wait_lora.items() if n > 0]

    @property
    def cpu_loras(self) -> list[str]:
        return list(self.lora.cpu)

    def evict_lora(self, name: str) -> None:
        """Drop an adapter from the CPU cache and GPU slots (on unload)."""
        self.lora.evict(name)

    def preload_lora(self, name: str) -> None:
        """Put an adapter in the CPU cache without a load delay (vLLM's startup ``--lora-modules``)."""
        self.lora.touch_cpu(name)

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
            if need > self.kv.num_free:
                need = self._preempt_until(need, preempted, k)
            if need:
                self.kv.alloc(need)
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
            lora_extra = self.lora.step_cost()

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
            LoraSlots.inc(self._wait_lora, req.lora)
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
            LoraSlots.dec(self._wait_lora, req.lora)

    def _add_running(self, req: SimRequest) -> None:
        self.running[req.seq] = req
        if req.lora:
            LoraSlots.inc(self._run_lora, req.lora)

    def _remove_running(self, req: SimRequest) -> None:
        del self.running[req.seq]
        if req.lora:
            LoraSlots.dec(self._run_lora, req.lora)
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

    # preemption --------------------------------------------------------

    def _preempt_until(self, need: int, preempted: list, k: int) -> int:
        """Preempt the newest running requests until ``need`` decode blocks fit; returns the new need."""
        bs = self.bs
        key = (-k) % bs
        while need > self.kv.num_free and self.running:
            victim = next(reversed(self.running.values()))
            if victim.state == DECODE and (victim.c0 - victim.k0) % bs == key:
                need -= 1
            self._preempt(victim, preempted)
        return need

    def _preempt(self, req: SimRequest, preempted: list) -> None:
        self._remove_running(req)
        self.kv.free(req)
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
        while need > self.kv.num_free:
            victim = next(reversed(self.running.values()))
            self._preempt(victim, preempted)
            if victim is req:
                return 0
        if need > 0:
            self.kv.alloc(need)
            req.held_blocks += need
        req.computed += n
        if self.cfg.enable_prefix_caching:
            self.kv.register(req)
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
        self.kv.free(req)
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
        kv = self.kv
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
            if caching and req.block_hashes:
                hit_blocks, evictable = kv.lookup(req.block_hashes, (num_tokens - 1) // bs)
            else:
                hit_blocks = evictable = 0
            hit_tokens = hit_blocks * bs
            n = num_tokens - hit_tokens
            if n > budget:
                n = budget
            need = -(-(hit_tokens + n) // bs) - hit_blocks
            if need + evictable > kv.num_free:
                break  # KV full: stop admitting (FCFS)
            # admit
            if prio:
                heapq.heappop(wh)
            else:
                wq.popleft()
            self._unwait(req)
            if hit_blocks:
                kv.acquire(req, hit_blocks)
            if need:
                kv.alloc(need)
            req.held_blocks = hit_blocks + need
            req.computed = hit_tokens + n
            req.prefix_hit_tokens = hit_tokens
            self.prefix_queries += num_tokens
            self.prefix_hits += hit_tokens
            if req.t_scheduled < 0:
                req.t_scheduled = now
                self.prompt_tokens_total += req.prompt_tokens
            if caching:
                kv.register(req)
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
        lora_extra = self.lora.step_cost() if (lora_on and self._run_lora) else 0.0
        return tokens, ctx, lora_extra

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
        free = self.kv.num_free
        assert held + free == self.total_blocks, (held, free, self.total_blocks)
        self.kv.check(refs)
        waiting = sum(1 for r in self._waiting if r.state == WAITING) + sum(
            1 for e in self._waiting_heap if e[3].state == WAITING
        )
        assert waiting == self.n_waiting, (waiting, self.n_waiting)
        assert len(self.running) <= self.cfg.max_num_seqs
