"""Workload samplers shared by the calibration, the tests and the benchmarks (design.md §5).

Everything takes a ``random.Random`` so runs are reproducible. Lengths are in tokens.

* :class:`ShareGPTLike` - lognormal fit of ShareGPT first turns (Llama-2 tokenizer):
  input mu 4.69 sigma 1.29, output mu 4.97 sigma 0.94, resampled until
  ``4 <= prompt <= 1024``, ``output >= 4`` and ``prompt + output <= 2048``.
* :class:`FixedLength` - constant prompt/output lengths (the calibration points).
* :class:`SharedPrefix` - the upstream prefix-cache benchmark: ``groups`` system prompts,
  ``prompts_per_group`` questions each, with chained block hashes synthesized so requests
  of one group share the system prompt's blocks.
* :func:`poisson_arrivals`, :class:`ZipfChoice` (skewed LoRA adapter popularity).

Block hashes synthesized here are plain 63-bit ints (deterministic, but not those of
``shared.hashing``: there is no text). Only their equality matters to the engine.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

BLOCK_TOKENS = 16
_MASK = (1 << 63) - 1


@dataclass(slots=True)
class WorkItem:
    """One request of a workload."""

    prompt_tokens: int
    output_tokens: int
    block_hashes: list[int] = field(default_factory=list)
    lora: str | None = None
    group: int = -1


def chain_hashes(seed: int, n_blocks: int, parent: int = 0) -> list[int]:
    """``n_blocks`` chained hashes continuing from ``parent`` (0 = start of a prompt)."""
    out = []
    h = parent
    for i in range(n_blocks):
        h = hash((h, seed, i)) & _MASK
        out.append(h)
    return out


_uniq = itertools.count(1 << 40)


def unique_hashes(prompt_tokens: int, rng: random.Random | None = None) -> list[int]:
    """Hashes of a prompt that shares no block with any other (full blocks only)."""
    seed = next(_uniq) if rng is None else rng.getrandbits(62)
    return chain_hashes(seed, prompt_tokens // BLOCK_TOKENS)


class ShareGPTLike:
    """ShareGPT-like lengths: truncated lognormal fit (design.md §5)."""

    IN_MU, IN_SIGMA = 4.69, 1.29
    OUT_MU, OUT_SIGMA = 4.97, 0.94
    MAX_PROMPT, MAX_TOTAL, MIN_LEN = 1024, 2048, 4

    def __init__(self, rng: random.Random | None = None, hashes: bool = True) -> None:
        self.rng = rng or random.Random(0)
        self.hashes = hashes

    def lengths(self) -> tuple[int, int]:
        lv = self.rng.lognormvariate
        while True:
            p = round(lv(self.IN_MU, self.IN_SIGMA))
            o = round(lv(self.OUT_MU, self.OUT_SIGMA))
            if self.MIN_LEN <= p <= self.MAX_PROMPT and o >= self.MIN_LEN and p + o <= self.MAX_TOTAL:
                return p, o

    def sample(self) -> WorkItem:
        p, o = self.lengths()
        return WorkItem(p, o, unique_hashes(p, self.rng) if self.hashes else [])


class FixedLength:
    """Every request has the same prompt and output lengths (unique prompts)."""

    def __init__(
        self, prompt_tokens: int, output_tokens: int, rng: random.Random | None = None, hashes: bool = True
    ) -> None:
        self.prompt_tokens, self.output_tokens = prompt_tokens, output_tokens
        self.rng = rng or random.Random(0)
        self.hashes = hashes

    def sample(self) -> WorkItem:
        p = self.prompt_tokens
        return WorkItem(p, self.output_tokens, unique_hashes(p, self.rng) if self.hashes else [])


class SharedPrefix:
    """Upstream prefix-cache benchmark: 256 groups x 16 prompts; system + question tokens.

    High reuse: ``system_tokens=2048, question_tokens=256``; low reuse: 256 + 2048.
    ``sample()`` draws a random (group, prompt) pair; ``ordered()`` yields all of them.
    """

    def __init__(
        self,
        rng: random.Random | None = None,
        groups: int = 256,
        prompts_per_group: int = 16,
        system_tokens: int = 2048,
        question_tokens: int = 256,
        output_tokens: int = 256,
    ) -> None:
        self.rng = rng or random.Random(0)
        self.groups, self.per_group = groups, prompts_per_group
        self.system_tokens, self.question_tokens, self.output_tokens = (
            system_tokens,
            question_tokens,
            output_tokens,
        )
        sys_blocks = system_tokens // BLOCK_TOKENS
        self._sys = [chain_hashes(1_000_003 * (g + 1), sys_blocks) for g in range(groups)]

    def item(self, group: int, index: int) -> WorkItem:
        sysh = self._sys[group]
        total = self.system_tokens + self.question_tokens
        rest = total // BLOCK_TOKENS - len(sysh)
        tail = chain_hashes(7_919 * (group * self.per_group + index + 1), rest, sysh[-1] if sysh else 0)
        return WorkItem(total, self.output_tokens, sysh + tail, group=group)

    def sample(self) -> WorkItem:
        return self.item(self.rng.randrange(self.groups), self.rng.randrange(self.per_group))

    def ordered(self) -> Iterator[WorkItem]:
        for g in range(self.groups):
            for i in range(self.per_group):
                yield self.item(g, i)


class ZipfChoice:
    """Pick from ``names`` with probability proportional to ``1 / rank**s`` (skewed popularity)."""

    def __init__(self, names: Sequence[str], s: float = 1.0, rng: random.Random | None = None) -> None:
        if not names:
            raise ValueError("names must not be empty")
        self.names = list(names)
        self.rng = rng or random.Random(0)
        w = [1.0 / (r + 1) ** s for r in range(len(self.names))]
        tot = sum(w)
        self._cum = list(itertools.accumulate(x / tot for x in w))

    def __call__(self) -> str:
        i = bisect.bisect_left(self._cum, self.rng.random())
        return self.names[min(i, len(self.names) - 1)]


def poisson_arrivals(rate: float, rng: random.Random | None = None, start: float = 0.0) -> Iterator[float]:
    """An endless sequence of Poisson arrival times at ``rate`` per second."""
    rng = rng or random.Random(0)
    t = start
    exp = rng.expovariate
    while True:
        t += exp(rate)
        yield t


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
