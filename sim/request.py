"""A simulated request, its states, and what one engine step reports."""

from __future__ import annotations

from dataclasses import dataclass, field

# Request states
PENDING, WAITING, PREFILL, DECODE, FINISHED, ABORTED = range(6)
STATE_NAMES = ("pending", "waiting", "prefill", "decode", "finished", "aborted")


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
        "token_ids",
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
        self.token_ids: list[int] | None = None  # the prompt's ids, when KV events need them
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
